"""The engine: one object that owns the strategy (device, precision, gradient sync).

It is public as ``trainer.Accelerator`` for hand-written loops (Accelerate's names), and
the ``Trainer``'s loop is written on the same object (``trainer.accelerator``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, ContextManager, Iterator

import torch

from trainer.accelerate import operations
from trainer.accelerate.state import ProcessDecorators
from trainer.strategies import Strategy
from trainer.strategies.support import apply_to_tensors
from trainer.accelerate.wrappers import AcceleratedOptimizer, AcceleratedScheduler, PreparedDataLoader
from trainer.accelerate.prepared import PreparedObjects
from trainer.accelerate.arguments import build_strategy, read_accelerate_args
from trainer.engine.gradient_state import GradientState
from trainer.accelerate.operations import DistributedType
from trainer.accelerate.plugins import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration
from trainer.accelerate.processes import ProcessState, distributed_type, split_between_processes
from trainer.engine.step_engine import StepEngine
from trainer.accelerate.tracking import TrackingMixin, _tracker_specs


class Accelerator(TrackingMixin, ProcessDecorators):
    """Device placement, mixed precision and gradient accumulation for your own loop.

    Args:
        mixed_precision: "no" / "fp16" / "bf16" (Accelerate), or any Trainer precision string.
        gradient_accumulation_steps: micro-batches per optimizer step inside ``accumulate()``.
        cpu: force the CPU even when a GPU is present.
        device_placement: move prepared models and batches to ``self.device``.
        strategy: a ``Strategy`` object or name (defaults to one device, picked cuda > mps > cpu).
        devices: how many devices (or which), as for the Trainer.
        dataloader_config: a ``DataLoaderConfiguration`` (``split_batches``, ``even_batches``,
            ``use_seedable_sampler``, ...), applied to every prepared loader.
        gradient_accumulation_plugin: a ``GradientAccumulationPlugin``; its ``num_steps`` takes the place
            of ``gradient_accumulation_steps`` (give one of the two).
        deepspeed_plugin: a ``DeepSpeedPlugin``: train under DeepSpeed ZeRO.
        fsdp_plugin: a ``FullyShardedDataParallelPlugin``: train under FSDP2.
        log_with: trackers for ``init_trackers``/``log``: "tensorboard", "wandb", "mlflow", "csv", "all",
            a logger object or a list of them.
        project_dir: where trackers and ``save_state`` write (also ``project_config.project_dir``).
        project_config: a ``ProjectConfiguration`` (automatic checkpoint naming, ``total_limit``).
        step_scheduler_with_optimizer: a prepared scheduler steps when its optimizer steps (Accelerate's
            default, True).
        split_batches: Accelerate's old place for it; pass ``DataLoaderConfiguration(split_batches=True)``.
        torch_tp_plugin, megatron_lm_plugin, parallelism_config: only data parallelism here; refused.
        rng_types, kwargs_handlers: refused unless left at their defaults (the error says what to use).
        dynamo_backend, dynamo_plugin: refused; call ``torch.compile(model)`` before ``prepare``.
        deepspeed_plugins: refused; one ``deepspeed_plugin`` per Accelerator.

    Example:
        >>> accelerator = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=4)
        >>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)  # doctest: +SKIP
        >>> for batch in loader:                                                      # doctest: +SKIP
        ...     with accelerator.accumulate(model):
        ...         accelerator.backward(model(batch).mean())
        ...         optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, device_placement: bool = True, split_batches: Any = None,
                 mixed_precision: str | None = None, gradient_accumulation_steps: int | None = None,
                 cpu: bool = False, dataloader_config: DataLoaderConfiguration | None = None,
                 deepspeed_plugin: Any = None, fsdp_plugin: Any = None, torch_tp_plugin: Any = None,
                 megatron_lm_plugin: Any = None, rng_types: Any = None, log_with: Any = None,
                 project_dir: str | None = None, project_config: ProjectConfiguration | None = None,
                 gradient_accumulation_plugin: GradientAccumulationPlugin | None = None,
                 step_scheduler_with_optimizer: bool = True, kwargs_handlers: Any = None,
                 dynamo_backend: Any = None, dynamo_plugin: Any = None, deepspeed_plugins: Any = None,
                 parallelism_config: Any = None, *, strategy: Strategy | str = "auto", devices: Any = "auto") -> None:
        args = read_accelerate_args(gradient_accumulation_steps, gradient_accumulation_plugin, dataloader_config,
                                    project_dir, project_config, {
                                        "split_batches": split_batches, "torch_tp_plugin": torch_tp_plugin,
                                        "megatron_lm_plugin": megatron_lm_plugin, "rng_types": rng_types,
                                        "kwargs_handlers": kwargs_handlers, "dynamo_backend": dynamo_backend,
                                        "dynamo_plugin": dynamo_plugin, "deepspeed_plugins": deepspeed_plugins,
                                        "parallelism_config": parallelism_config})
        if args.gradient_accumulation is not None:
            gradient_accumulation_steps = args.gradient_accumulation.num_steps
        built, gradient_accumulation_steps = build_strategy(
            strategy, devices, mixed_precision, gradient_accumulation_steps, cpu, deepspeed_plugin, fsdp_plugin)
        specs = _tracker_specs(log_with)  # checked now: a typo fails before training
        plugin = args.gradient_accumulation or GradientAccumulationPlugin(num_steps=gradient_accumulation_steps)
        self._start(built, plugin, args.dataloader, args.project, specs, device_placement=device_placement,
                    step_scheduler_with_optimizer=step_scheduler_with_optimizer, deepspeed_plugin=deepspeed_plugin,
                    fsdp_plugin=fsdp_plugin)

    @classmethod
    def for_strategy(cls, strategy: Strategy) -> Accelerator:
        """The runtime over an already resolved ``strategy``, every other setting at Accelerate's default:
        how the Trainer builds its own (``trainer.accelerator``), without reading the user constructor's
        arguments or resolving the strategy a second time."""
        if not isinstance(strategy, Strategy):
            raise TypeError(f"Accelerator.for_strategy({strategy!r:.80}): expected a Strategy object; for a name "
                            "such as 'ddp' use Accelerator(strategy='ddp').")
        runtime = cls.__new__(cls)
        runtime._start(strategy, GradientAccumulationPlugin(num_steps=1), DataLoaderConfiguration(),
                       ProjectConfiguration(), [])
        return runtime

    def _start(self, strategy: Strategy, plugin: GradientAccumulationPlugin, dataloader: DataLoaderConfiguration,
               project: ProjectConfiguration, tracker_specs: list[Any], *, device_placement: bool = True,
               step_scheduler_with_optimizer: bool = True, deepspeed_plugin: Any = None,
               fsdp_plugin: Any = None) -> None:
        """Set the runtime up from settings already checked: the strategy's processes, the step engine,
        the gradient state and the prepared-object registry."""
        gradient_accumulation_steps = plugin.num_steps
        assert gradient_accumulation_steps is not None  # the plugin checked it: a positive int
        self.strategy = strategy
        self._tracker_specs = tracker_specs
        self.strategy.setup()
        self.device_placement = device_placement
        self.deepspeed_plugin, self.fsdp_plugin = deepspeed_plugin, fsdp_plugin
        self.dataloader_config = dataloader
        self.project_configuration = project
        self.project_dir = project.project_dir
        self.step_scheduler_with_optimizer = step_scheduler_with_optimizer
        self._gradient_state = GradientState(gradient_accumulation_steps, plugin.sync_with_dataloader,
                                            plugin.adjust_scheduler, plugin.sync_each_batch)
        self.engine = StepEngine(self.strategy, gradient_accumulation_steps)
        self._state = ProcessState(self)
        self._step = 0  # micro-steps seen by accumulate()
        self.prepared = PreparedObjects()  # what save_state writes and load_state restores, in order
        self._trigger = False
        self.trackers: list[Any] = []
        self._log_step = 0
        self._joined = False  # inside join_uneven_inputs: processes may run different numbers of batches
        from trainer.accelerate.state import register_accelerator

        register_accelerator(self)  # what AcceleratorState() / GradientState() find

    # Accelerate's private names of the prepared lists, which some Accelerate users' code reads
    # (accelerator._models[0], len(accelerator._optimizers)): the very lists of the public registry
    _models = property(lambda self: self.prepared.models)
    _optimizers = property(lambda self: self.prepared.optimizers)
    _schedulers = property(lambda self: self.prepared.schedulers)
    _dataloaders = property(lambda self: self.prepared.dataloaders)
    _custom_objects = property(lambda self: self.prepared.custom_objects)

    # -- who and where ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.strategy.root_device

    @property
    def precision(self) -> str:
        return self.strategy.precision.name

    @property
    def mixed_precision(self) -> str:
        return self.strategy.precision.mixed_precision or "no"  # Accelerate has no name for bf16-true

    @property
    def num_processes(self) -> int:
        return self.strategy.world_size

    @property
    def process_index(self) -> int:
        return self.strategy.global_rank

    @property
    def local_process_index(self) -> int:
        return self.strategy.local_rank

    @property
    def is_main_process(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def is_local_main_process(self) -> bool:
        return self.strategy.local_rank == 0

    @property
    def step(self) -> int:
        """Micro-steps run inside ``accumulate()`` (saved by ``save_state``)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value

    @property
    def state(self) -> ProcessState:
        """Accelerate's ``AcceleratorState`` names (distributed_type, num_processes, device, ...)."""
        return self._state

    @property
    def gradient_state(self) -> GradientState:
        """The active dataloaders (a stack) and whether this micro-step syncs gradients."""
        return self._gradient_state

    @property
    def is_last_process(self) -> bool:
        return self.process_index == self.num_processes - 1

    @property
    def distributed_type(self) -> DistributedType:
        """How the processes share the work: NO, MULTI_CPU, MULTI_GPU, FSDP or DEEPSPEED."""
        return distributed_type(self.strategy)

    @property
    def use_distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def split_batches(self) -> bool:
        return self.dataloader_config.split_batches

    @property
    def even_batches(self) -> bool:
        return self.dataloader_config.even_batches

    @property
    def logging_dir(self) -> str | None:
        return self.project_configuration.logging_dir

    @property
    def sync_gradients(self) -> bool:
        """True on the micro-step that closes an accumulation window (gradients synced, optimizers step)."""
        return self.gradient_state.sync_gradients

    @sync_gradients.setter
    def sync_gradients(self, value: bool) -> None:
        self.gradient_state._set_sync_gradients(value)

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.gradient_state.num_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int) -> None:
        self.engine.plan(accumulation=value)
        self.gradient_state.num_steps = value

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """Whether the last optimizer step was skipped: its ``StepResult`` from the step engine (inf/nan
        gradients under fp16 loss scaling: the GradScaler's, or DeepSpeed's own)."""
        return any(opt.step_was_skipped for opt in self.prepared.optimizers)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` once per job (on the main process)."""
        if self.is_main_process:
            print(*args, **kwargs)

    # -- prepare ------------------------------------------------------------------------------
    def prepare(self, *objects: Any) -> Any:
        """Prepare models, optimizers, dataloaders and schedulers, in any order.

        Anything else is returned as it came. Returns one object for one argument, else a tuple.
        """
        # The models and optimizers go to the strategy together (it may shard the models, or build one
        # engine over a model and its optimizer); it returns them with the driver the engine steps them with.
        prepared = list(objects)
        models = [(i, o) for i, o in enumerate(objects) if isinstance(o, torch.nn.Module)]
        optimizers = [(i, o) for i, o in enumerate(objects)
                      if isinstance(o, torch.optim.Optimizer) and not isinstance(o, AcceleratedOptimizer)]
        if models or optimizers:
            ready_models, ready_optimizers = self._prepare_with_strategy([o for _, o in models], [o for _, o in optimizers])
            for (i, _), model in zip(models, ready_models):
                prepared[i] = self._register_model(model)
            for (i, _), optimizer in zip(optimizers, ready_optimizers):
                prepared[i] = self._wrap_optimizer(optimizer)
        for i, obj in enumerate(objects):
            if isinstance(obj, torch.utils.data.DataLoader):
                prepared[i] = self.prepare_data_loader(obj)
            elif _is_scheduler(obj):
                prepared[i] = self.prepare_scheduler(obj)
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    def _prepare_with_strategy(self, models: list[torch.nn.Module],
                               optimizers: list[torch.optim.Optimizer]) -> tuple[list[Any], list[Any]]:
        if not self.device_placement:  # the models stay where they are; the optimizers are set up alone
            ready_optimizers = self.strategy.prepare([], optimizers)[1] if optimizers else []
            return models, ready_optimizers
        ready_models, ready_optimizers, driver = self.strategy.prepare(models, optimizers)
        self.engine.plan(driver=driver)
        return ready_models, ready_optimizers

    def _register_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if all(m is not model for m in self.prepared.models):
            self.prepared.models.append(model)
        return model

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return self._register_model(self._prepare_with_strategy([model], [])[0][0])

    def prepare_trainer_module(self, module: torch.nn.Module, manual: bool = False) -> tuple[torch.nn.Module, Any]:
        """For the Trainer: the prepared model and the callable that runs ``training_step``
        (``manual``: the module runs its own backward and steps, see trainer/loops/manual.py)."""
        model, step = self.strategy.setup_trainer_module(module, manual=manual)
        if all(m is not module for m in self.prepared.models):
            self.prepared.models.append(module)
        return model, step

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> AcceleratedOptimizer:
        if isinstance(optimizer, AcceleratedOptimizer):
            return optimizer
        return self._wrap_optimizer(self._prepare_with_strategy([], [optimizer])[1][0])

    def _wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> AcceleratedOptimizer:
        wrapped = AcceleratedOptimizer(optimizer, self)
        self.prepared.optimizers.append(wrapped)
        self.engine.plan(optimizers=[*self.engine.optimizers, optimizer])
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        wrapped = AcceleratedScheduler(scheduler, self)
        self.prepared.schedulers.append(wrapped)
        return wrapped

    def prepare_data_loader(self, loader: torch.utils.data.DataLoader) -> PreparedDataLoader:
        """Batches on the device; with several processes each gets its share as Accelerate deals it
        (``trainer/accelerate/data_loader.py``): whole batches of the single-process order in turn (or slices of
        each batch with ``split_batches``), so N processes at one seed see what one process sees with
        N times the batch; the loader's sampler and ``generator=`` decide the order (process 0's draw
        is used everywhere). The epoch advances on every pass.

        With ``even_batches`` (the default) the last step is completed with the pass's first samples
        so every process runs the same number of steps; ``gather_for_metrics`` drops those repeats
        again. ``even_batches=False`` is for evaluation: training on it is refused unless inside
        ``join_uneven_inputs``. An ``IterableDataset`` (or ``dispatch_batches=True``) is read by
        process 0 alone, which sends each process its share -- except a sharded stream
        (``trainer/data/sharded_stream.py``), which deals its shards to the processes itself: each
        process reads its own loader.

        ``DataLoaderConfiguration(use_stateful_dataloader=True)``: ``save_state`` records each process's
        position in the pass and ``load_state`` puts it back (see ``PreparedDataLoader``); a plain
        ``DataLoader`` over an ``IterableDataset`` is rebuilt as torchdata's ``StatefulDataLoader``.
        """
        if isinstance(loader, PreparedDataLoader):
            return loader
        from trainer.accelerate.data_loader import shard_for_processes, stateful_loader

        config = self.dataloader_config
        if config.use_stateful_dataloader:
            loader = stateful_loader(loader, self.num_processes, config.dispatch_batches)
        loader = shard_for_processes(loader, self.num_processes, self.process_index,
                                     split_batches=config.split_batches, even_batches=config.even_batches,
                                     dispatch_batches=config.dispatch_batches,
                                     use_seedable_sampler=config.use_seedable_sampler, data_seed=config.data_seed)
        owner = None  # what saves a stream's position (the StatefulDataLoader, or its dataset read in process)
        stream = isinstance(getattr(loader, "dataset", None), torch.utils.data.IterableDataset)
        if config.use_stateful_dataloader and stream:
            from trainer.data.loader_state import saveable

            owner = saveable(loader)
        prepared = PreparedDataLoader(loader, self, stateful=config.use_stateful_dataloader, position_owner=owner)
        self.prepared.dataloaders.append(prepared)
        return prepared

    def batch_to_device(self, batch: Any) -> Any:
        if not self.device_placement:
            return batch
        if self.engine.profiler is None:
            return self.strategy.batch_to_device(batch)
        with self.engine.timed("batch_to_device"):
            return self.strategy.batch_to_device(batch)

    def unwrap_model(self, model: torch.nn.Module, keep_fp32_wrapper: bool = True,
                     keep_torch_compile: bool = False) -> torch.nn.Module:
        """The user's original module, without strategy wrappers (DDP, compile).

        Args:
            keep_fp32_wrapper: accepted for Accelerate's signature; mixed precision here never wraps
                the model's ``forward`` (autocast is entered by ``accelerator.autocast()``), so there is
                no wrapper to keep or remove.
            keep_torch_compile: return the ``torch.compile`` wrapper instead of the module inside.
        """
        model = self.strategy.unwrap_module(model)
        return model if keep_torch_compile else getattr(model, "_orig_mod", model)

    # -- the step -----------------------------------------------------------------------------
    def autocast(self) -> ContextManager:
        """The forward context of this precision (``torch.autocast`` for mixed precision)."""
        return self.strategy.forward_context()

    def backward(self, loss: torch.Tensor, num_items: Any = None, **kwargs: Any) -> None:
        """``loss.backward()`` with loss scaling, weighted for the accumulation window.

        Inside ``accumulate()`` each micro-batch from a prepared dataloader counts with its number
        of samples, so a window -- a short last one or uneven batches included -- gives the
        gradient of one big batch of its samples (``num_items``: ``loss`` is a sum over that many
        items, e.g. tokens; the step is then the mean over every item of the window on every
        process). Outside ``accumulate()`` the loss is divided by ``gradient_accumulation_steps``.
        """
        if kwargs:
            raise TypeError(f"accelerator.backward(loss, {', '.join(f'{k}=...' for k in kwargs)}): extra arguments to "
                            "loss.backward() are not supported (the strategy runs backward). Drop them.")
        if not self._joined and self.num_processes > 1:
            self._refuse_uneven_training()
        engine = self.engine
        weight = engine.item_weight
        if weight is not None and num_items is None and engine.window.micro == 0:
            # outside accumulate(), on a step of a re-dealt rest whose ranks hold uneven items (load_state,
            # sharded_stream.py): each sample weighs its share of the global mean, as inside a window
            loader = self._gradient_state.active_dataloader
            engine.backward(loss * (weight * (loader.batch_len if loader is not None else 1)))
            return
        engine.backward(engine.scale_loss(loss, num_items))

    @contextlib.contextmanager
    def accumulate(self, *models: torch.nn.Module) -> Iterator[None]:
        """Run one micro-step: gradients sync, and prepared optimizers and schedulers step, only on
        the window's last micro-step (the ``gradient_accumulation_steps``-th, or the last batch of
        the active prepared dataloader)."""
        state = self._gradient_state
        loader = state.dataloader_references[-1]  # the active one
        if loader is None:
            size, ends = 1, False
        else:
            size, ends = loader.batch_len or 1, state.sync_with_dataloader and loader.end_of_dataloader
        closes = self.engine.begin_micro(size, ends)
        self._step += 1
        state.sync_gradients = closes
        if closes or state.sync_each_batch:  # the common case on one process: no context to enter
            yield
            return
        with self.engine.sync_context(models, sync=False):
            yield

    @contextlib.contextmanager
    def no_sync(self, *models: torch.nn.Module) -> Iterator[None]:
        """Skip the gradient all-reduce for these models (a no-op on one device)."""
        with self.engine.sync_context(models, sync=False):
            yield

    @contextlib.contextmanager
    def trigger_sync_in_backward(self, *models: torch.nn.Module) -> Iterator[None]:
        """Make the next backward all-reduce gradients although the forward ran under ``no_sync``
        (several forwards first, then several backwards)."""
        with contextlib.ExitStack() as stack:
            for model in models:
                stack.enter_context(self.strategy.force_backward_sync(model))
            yield

    def unscale_gradients(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Undo loss scaling on the gradients (16-mixed) so they can be inspected or clipped."""
        targets = [optimizer] if optimizer is not None else self.prepared.optimizers
        for opt in targets:
            self.engine.unscale(getattr(opt, "optimizer", opt))

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the gradient norm after unscaling; returns the total norm before clipping."""
        return self.engine.clip(None, max_norm, "norm", parameters=parameters, norm_type=norm_type)

    def clip_grad_value_(self, parameters: Any, clip_value: float) -> None:
        """Clip each gradient to [-clip_value, clip_value] after unscaling."""
        self.engine.clip(None, clip_value, "value", parameters=parameters)

    # -- collectives ----------------------------------------------------------------------------
    def gather(self, tensor: Any) -> Any:
        """Concatenate tensors from every process along dim 0."""
        return apply_to_tensors(tensor, lambda t: self.strategy.all_gather(t).flatten(0, 1)
                                if t.dim() else self.strategy.all_gather(t))

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """``gather``, then, inside a prepared dataloader's loop: the samples in the sampler's order
        (the dataset's order when not shuffled) with the padding repeats of the last batch dropped,
        so a metric over everything gathered counts every sample exactly once.

        Tensors (and nests of them) are gathered along their first (batch) dimension. Anything else
        -- e.g. a list of decoded strings, one per sample -- or ``use_gather_object=True`` goes
        through ``gather_object`` (pickled; lists concatenated), as under Accelerate; a list with one
        item per sample of the batch is put in sampler order without the padding repeats too.
        """
        loader = self.gradient_state.active_dataloader
        sampler = loader.padded_sampler if loader is not None and self.num_processes > 1 else None
        if sampler is None and self.num_processes > 1:  # dealt as Accelerate deals: rank order is the order
            real = self._real_in_last_step(loader)
            if use_gather_object or not _only_tensors(input_data):
                gathered = self.gather_object(input_data)
                per_sample = real is not None and isinstance(input_data, (list, tuple)) \
                    and len(input_data) == loader.batch_len
                return gathered[:real] if real is not None and per_sample else gathered

            def gather_and_cut(t: torch.Tensor) -> torch.Tensor:
                if t.dim() == 0:  # one value per process, not per sample
                    return self.strategy.all_gather(t)
                gathered = self.strategy.all_gather(t).flatten(0, 1)
                return gathered[:real] if real is not None and t.shape[0] == loader.batch_len else gathered

            return apply_to_tensors(input_data, gather_and_cut)
        if use_gather_object or not _only_tensors(input_data):
            gathered = self.gather_object(input_data)
            if sampler is None or not isinstance(input_data, (list, tuple)) or len(input_data) != loader.batch_len:
                return gathered
            return [gathered[i] for i in self._in_sampler_order(len(input_data), loader, sampler).tolist()]
        if sampler is None:
            return self.gather(input_data)

        def gather_in_order(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0:  # one value per process, not per sample
                return self.strategy.all_gather(t)
            gathered = self.strategy.all_gather(t).flatten(0, 1)
            if t.shape[0] != loader.batch_len:  # not one row per sample of this batch: nothing to match up
                return gathered
            return gathered[self._in_sampler_order(t.shape[0], loader, sampler).to(gathered.device)]

        return apply_to_tensors(input_data, gather_in_order)

    def _refuse_uneven_training(self) -> None:
        from trainer.accelerate.data_loader import find_shard

        loader = self.gradient_state.active_dataloader
        shard = find_shard(loader) if loader is not None else None
        if shard is not None and not shard.even_batches:
            raise RuntimeError("accelerator.backward() on a dataloader prepared with DataLoaderConfiguration("
                               "even_batches=False): its processes run different numbers of batches, and every "
                               "backward all-reduces gradients, so the process with more batches would wait forever. "
                               "Train on an even loader (the default: the last step repeats the first samples), or "
                               "wrap the loop in `with accelerator.join_uneven_inputs([model]):`. Uneven loaders are "
                               "for evaluation.")

    @staticmethod
    def _real_in_last_step(loader: Any) -> int | None:
        """On a dealt loader's last step (see ``trainer/accelerate/data_loader.py``): how many of the samples
        gathered in rank order are real, the rest being the repeats that completed the step
        (Accelerate cuts the same tail); None elsewhere (keep everything)."""
        from trainer.accelerate.data_loader import DataLoaderDispatcher, find_shard

        if loader is None or not loader.end_of_dataloader:
            return None
        shard = find_shard(loader)
        if shard is None or not shard.even_batches:
            return None
        real = shard.real_in_last_step if isinstance(shard, DataLoaderDispatcher) else loader.remainder
        return real if real > 0 else None

    def _in_sampler_order(self, local: int, loader: PreparedDataLoader, sampler: Any) -> torch.Tensor:
        """Indices into ``local`` samples gathered from every rank (rank-major) that put them in the
        sampler's order and leave out the padding repeats."""
        world, start, total = self.num_processes, loader.samples_before, len(sampler.dataset)
        # element (rank r, local position start + j) is sample number r + (start + j) * world of the epoch
        positions = torch.arange(world).repeat_interleave(local) + (start + torch.arange(local).repeat(world)) * world
        order = torch.argsort(positions)
        return order[positions[order] < total]

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        """Reduce tensors (nests too) over the processes: "sum", "mean", "max" or "min", times ``scale``."""
        return operations.reduce(tensor, reduction, scale)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad tensors along ``dim`` to the longest any process has, so they can be gathered."""
        return operations.pad_across_processes(tensor, dim, pad_index, pad_first)

    def gather_object(self, obj: Any) -> Any:
        """Every process's picklable ``obj`` (lists are concatenated in rank order)."""
        return operations.gather_object(obj)

    def broadcast(self, tensor: Any, from_process: int = 0) -> Any:
        """``from_process``'s tensors (nests too) on every process."""
        return operations.broadcast(tensor, from_process)

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """This process's contiguous share of a list, tuple, tensor or dict of them (e.g. prompts to
        generate from); ``apply_padding`` repeats the last item so the shares can be gathered."""
        with split_between_processes(inputs, self.num_processes, self.process_index, apply_padding) as share:
            yield share

    @contextlib.contextmanager
    def join_uneven_inputs(self, joinables: list[Any], even_batches: bool | None = None) -> Iterator[None]:
        """Let DDP processes run different numbers of batches: ``torch.distributed.algorithms.Join``
        over the prepared DDP models (a no-op on one process). ``even_batches`` overrides, inside the
        block, how every prepared map-style dataloader deals its last step (an iterable dataset's
        loader keeps its setting, with a warning)."""
        import warnings

        # Accelerate's behaviour follows accelerator.state.distributed_type, which its users (and its own test
        # script) set; the warning follows the state here too
        if self.state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            if self.num_processes > 1:
                warnings.warn(f"join_uneven_inputs: only supported for multi-GPU (and multi-CPU) data parallel "
                              f"training; this job is {self.state.distributed_type.value}, so the block runs "
                              "without joining.", UserWarning, stacklevel=3)
            yield
            return
        from trainer.accelerate.data_loader import BatchSamplerShard, find_shard

        overridden: list[tuple[Any, bool]] = []
        if even_batches is not None:
            for prepared in self.prepared.dataloaders:
                shard = find_shard(prepared)
                if isinstance(shard, BatchSamplerShard):
                    overridden.append((shard, shard.even_batches))
                    shard.even_batches = even_batches
                elif shard is not None:
                    warnings.warn("join_uneven_inputs(even_batches=...): overriding even_batches is only supported "
                                  "for map-style datasets; a dataloader whose batches process 0 dispatches (an "
                                  "IterableDataset) keeps its setting.", UserWarning, stacklevel=3)
        ddp: list[Any] = [j for j in joinables if isinstance(j, torch.nn.parallel.DistributedDataParallel)]
        joined, self._joined = self._joined, True
        try:
            if not ddp:
                yield
            else:
                from torch.distributed.algorithms.join import Join

                with Join(ddp):
                    yield
        finally:
            self._joined = joined
            for shard, value in overridden:
                shard.even_batches = value

    def set_trigger(self) -> None:
        """Raise a flag on this process; ``check_trigger()`` then returns True on every process."""
        self._trigger = True

    def check_trigger(self) -> bool:
        """True on every process if any process called ``set_trigger()`` since the last check (a
        collective: call it on every process); the flag is lowered again."""
        flag = torch.tensor(1.0 if self._trigger else 0.0, device=self.device)
        if self.reduce(flag, "sum").item() > 0:
            self._trigger = False
            return True
        return False

    def wait_for_everyone(self) -> None:
        self.strategy.barrier()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Let the main process run the block first (e.g. to download or cache), then the others."""
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        """Let each machine's first process run the block first, then the others."""
        if not self.is_local_main_process:
            self.wait_for_everyone()
        yield
        if self.is_local_main_process:
            self.wait_for_everyone()

    def free_memory(self, *objects: Any) -> list[None]:
        """Forget every prepared object (models, optimizers, schedulers, dataloaders), collect
        garbage and empty the CUDA cache; returns one None per object passed, to rebind them:
        ``model, optimizer = accelerator.free_memory(model, optimizer)``."""
        import gc

        self.prepared.forget()
        self.engine.plan(optimizers=[])
        self.engine.reset_window()
        self.step = 0
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return [None for _ in objects]

    clear = free_memory

    def end_training(self) -> None:
        """Close every tracker (files flushed, runs finished), then release the process group."""
        for tracker in self.trackers:
            tracker.flush_writes()  # the rows still queued on its writer thread first (a write's error raised here)
            tracker.finalize("success")
            close = getattr(tracker, "close", None)
            if close is not None:
                close()
        self.trackers = []
        self.strategy.teardown()

    # -- state and weights ------------------------------------------------------------------------
    def register_for_checkpointing(self, *objects: Any) -> None:
        """Include objects with ``state_dict``/``load_state_dict`` in ``save_state``/``load_state``."""
        for obj in objects:
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"register_for_checkpointing({obj!r:.80}): the object needs state_dict() and "
                                "load_state_dict() methods.")
            self.prepared.custom_objects.append(obj)

    def save_state(self, output_dir: str | None = None) -> str:
        """Save every prepared model, optimizer, scheduler, the gradient scaler, RNG states and
        registered objects into ``output_dir`` (written whole, or not at all). Returns the path.

        Without ``output_dir`` (``ProjectConfiguration(automatic_checkpoint_naming=True)``): into
        ``project_dir/checkpoints/checkpoint_<iteration>``, keeping at most ``total_limit``.
        """
        from trainer.accelerate.arguments import next_checkpoint_dir
        from trainer.persistence.accelerator_state import save_state

        automatic = output_dir is None
        if automatic:
            output_dir = next_checkpoint_dir(self.project_configuration) if self.is_main_process else ""
            output_dir = self.strategy.broadcast(output_dir)
        assert output_dir is not None  # given, or chosen above
        path = save_state(self, output_dir)
        if automatic:
            self.project_configuration.iteration += 1
        return path

    def load_state(self, input_dir: str | None = None, strict: bool = True) -> None:
        """Restore what ``save_state`` wrote, into the objects prepared in the same order; without
        ``input_dir``, the newest automatic checkpoint (and the next automatic save follows it)."""
        from trainer.accelerate.arguments import newest_checkpoint_dir
        from trainer.persistence.accelerator_state import load_state

        load_state(self, newest_checkpoint_dir(self.project_configuration) if input_dir is None else input_dir,
                   strict=strict)

    def save(self, obj: Any, f: Any, safe_serialization: bool = False) -> None:
        """Write ``obj`` (e.g. a state dict) to ``f`` once per job, on the main process:
        ``torch.save`` -- a file ``torch.load(f, weights_only=True)`` reads -- or safetensors with
        ``safe_serialization=True``. What ``save_pretrained(..., save_function=accelerator.save)`` calls."""
        from trainer.accelerate.helpers import save

        save(obj, f, safe_serialization=safe_serialization)

    def get_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict of ``model`` (gathered on rank zero under FSDP)."""
        return self.strategy.full_state_dict(self.unwrap_model(model))

    def save_model(self, model: torch.nn.Module, save_directory: str, max_shard_size: int | str = "10GB",
                   safe_serialization: bool = True) -> list[str]:
        """Write plain weights as safetensors, split into shards under ``max_shard_size`` with a
        ``model.safetensors.index.json``; load them with ``safetensors`` alone. Returns file names.

        A model with ``save_pretrained`` (a Hugging Face ``PreTrainedModel``) is saved through it, with
        the full state dict, so ``from_pretrained(save_directory)`` loads the result.
        """
        from trainer.strategies.safetensors_weights import save_weights

        if not safe_serialization:
            raise ValueError("save_model(safe_serialization=False): only safetensors is written (pickle files can "
                             "carry code). Drop the argument.")
        state = self.get_state_dict(model)
        names: list[str] = []
        unwrapped: Any = self.unwrap_model(model)  # maybe a Hugging Face model (save_pretrained)
        if self.is_main_process and callable(getattr(unwrapped, "save_pretrained", None)):
            # a Hugging Face model: its own format (config.json next to the weights), loadable with from_pretrained
            unwrapped.save_pretrained(save_directory, state_dict=state, safe_serialization=True,
                                      max_shard_size=max_shard_size)
            names = sorted(os.listdir(save_directory))
        elif self.is_main_process:
            names = save_weights(state, save_directory, max_shard_size)
        self.wait_for_everyone()
        return names

    def skip_first_batches(self, dataloader: Any, num_batches: int) -> Any:
        """A prepared dataloader that starts at batch ``num_batches`` of the same order (to resume
        inside an epoch: ``load_state``, then this). After ``load_state`` it draws the order of the
        pass the state was saved in (its epoch and, for a plain shuffle, its random states), and its
        pass counts as that epoch's, so later passes of ``dataloader`` go on from the next epoch; no
        ``set_epoch`` is needed (calling it, as Accelerate's docs suggest, is fine). Reading it leaves
        the random streams ``load_state`` put back untouched, so a resumed run draws what the
        uninterrupted one drew (README: the restart pattern)."""
        from trainer.data.data_position import SameRandomStreams, skip_batches

        if num_batches and isinstance(dataloader, PreparedDataLoader) and dataloader.resumes_inside_pass:
            raise ValueError(f"accelerator.skip_first_batches(dataloader, {num_batches}) after load_state on a "
                             "dataloader prepared with DataLoaderConfiguration(use_stateful_dataloader=True): "
                             "load_state already put it where the saved run was, so skipping would leave out "
                             f"{num_batches} more untrained batch(es). Iterate the dataloader itself.")
        loader = getattr(dataloader, "loader", dataloader)
        skipped = num_batches * (getattr(loader, "batch_size", None) or 0)
        source = dataloader if isinstance(dataloader, PreparedDataLoader) else None
        return PreparedDataLoader(SameRandomStreams(skip_batches(loader, num_batches)), self, skipped_samples=skipped,
                                  auto_epoch=False, source=source, skipped_batches=num_batches)


def _only_tensors(data: Any) -> bool:
    """Whether every leaf of a nest of lists, tuples and dicts is a tensor (what ``gather`` can take)."""
    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, dict):
        return all(_only_tensors(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return all(_only_tensors(v) for v in data)
    return False


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))
