"""The engine: one object that owns the strategy (device, precision, gradient sync).

It is public as ``trainer.Accelerator`` for hand-written loops (Accelerate's names), and
the ``Trainer``'s loop is written on the same object (``trainer.accelerator``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator

import torch

from trainer.strategies import Strategy, resolve_strategy
from trainer.strategies._util import apply_to_tensors
from trainer.launch import apply_launch_settings, launch_settings
from trainer._wrappers import AcceleratedOptimizer, AcceleratedScheduler, PreparedDataLoader
from trainer.tracking import TrackingMixin, _tracker_specs


class Accelerator(TrackingMixin):
    """Device placement, mixed precision and gradient accumulation for your own loop.

    Args:
        mixed_precision: "no" / "fp16" / "bf16" (Accelerate), or any Trainer precision string.
        gradient_accumulation_steps: micro-batches per optimizer step inside ``accumulate()``.
        cpu: force the CPU even when a GPU is present.
        device_placement: move prepared models and batches to ``self.device``.
        strategy: a ``Strategy`` object or name (defaults to one device, picked cuda > mps > cpu).
        devices: how many devices (or which), as for the Trainer.

    Example:
        >>> accelerator = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=4)
        >>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)  # doctest: +SKIP
        >>> for batch in loader:                                                      # doctest: +SKIP
        ...     with accelerator.accumulate(model):
        ...         accelerator.backward(model(batch).mean())
        ...         optimizer.step(); optimizer.zero_grad()
    """

    def __init__(self, device_placement: bool = True, mixed_precision: str | None = None,
                 gradient_accumulation_steps: int | None = None, cpu: bool = False,
                 strategy: Strategy | str = "auto",
                 devices: Any = "auto", deepspeed_plugin: Any = None, fsdp_plugin: Any = None,
                 log_with: Any = None, project_dir: str | None = None,
                 step_scheduler_with_optimizer: bool = True) -> None:
        given = {"mixed_precision": mixed_precision, "gradient_accumulation_steps": gradient_accumulation_steps,
                 "strategy": None if strategy == "auto" else strategy, "accelerator": "cpu" if cpu else None}
        # a Strategy object is already resolved (e.g. by the Trainer, which applied the launch settings)
        launched = given if isinstance(strategy, Strategy) else apply_launch_settings("Accelerator", given)
        mixed_precision, strategy = launched["mixed_precision"], launched["strategy"] or "auto"
        gradient_accumulation_steps = launched["gradient_accumulation_steps"]
        gradient_accumulation_steps = 1 if gradient_accumulation_steps is None else gradient_accumulation_steps
        cpu = launched["accelerator"] == "cpu"
        if isinstance(gradient_accumulation_steps, bool) or not isinstance(gradient_accumulation_steps, int) \
                or gradient_accumulation_steps < 1:
            raise ValueError(f"Accelerator(gradient_accumulation_steps={gradient_accumulation_steps!r}): "
                             "expected a positive int (1 means no accumulation).")
        self._tracker_specs = _tracker_specs(log_with)  # checked now: a typo fails before training
        options = None
        if deepspeed_plugin is not None and fsdp_plugin is not None:
            raise ValueError("Accelerator(deepspeed_plugin=..., fsdp_plugin=...): pick one sharded strategy.")
        if deepspeed_plugin is not None:
            strategy = deepspeed_plugin.strategy(mixed_precision, gradient_accumulation_steps)
        elif fsdp_plugin is not None:
            if strategy not in ("auto", "fsdp"):
                raise ValueError(f"Accelerator(strategy={strategy!r}, fsdp_plugin=...): the plugin configures FSDP; "
                                 "drop strategy= or set strategy='fsdp'.")
            strategy, options = "fsdp", fsdp_plugin.options()
        elif isinstance(strategy, str):
            options = launch_settings().get(strategy)  # the config file's section (e.g. fsdp options)
        self.strategy = resolve_strategy(strategy, accelerator="cpu" if cpu else launched["accelerator"] or "auto",
                                         devices=devices, precision=mixed_precision, options=options)
        self.strategy.setup()
        self.device_placement = device_placement
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.step_scheduler_with_optimizer = step_scheduler_with_optimizer
        self.project_dir = project_dir
        self.sync_gradients = True
        self.step = 0  # micro-steps seen by accumulate()
        self._micro = 0  # position inside the current accumulation window
        self._window_len = gradient_accumulation_steps
        self._active_loader: PreparedDataLoader | None = None
        self._models: list[torch.nn.Module] = []
        self._optimizers: list[AcceleratedOptimizer] = []
        self._schedulers: list[AcceleratedScheduler] = []
        self._custom_objects: list[Any] = []
        self.trackers: list[Any] = []
        self._log_step = 0

    # -- who and where ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.strategy.root_device

    @property
    def precision(self) -> str:
        return self.strategy.precision.name

    @property
    def mixed_precision(self) -> str:
        return {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(self.precision, "no")

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

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` once per job (on the main process)."""
        if self.is_main_process:
            print(*args, **kwargs)

    # -- prepare ------------------------------------------------------------------------------
    def prepare(self, *objects: Any) -> Any:
        """Prepare models, optimizers, dataloaders and schedulers, in any order.

        Anything else is returned as it came. Returns one object for one argument, else a tuple.
        """
        # Models first, so optimizers see parameters already converted for the precision.
        prepared = list(objects)
        if hasattr(self.strategy, "setup_engine"):  # DeepSpeed: one engine owns the model and its optimizer
            return self._prepare_engine(objects)
        before: dict[int, str] = {}  # id of each parameter -> its name, to follow in-place sharding (FSDP2)
        for i, obj in enumerate(objects):
            if isinstance(obj, torch.nn.Module):
                names = {id(p): n for n, p in obj.named_parameters()}
                prepared[i] = self.prepare_model(obj)
                after = dict(self.unwrap_model(prepared[i]).named_parameters())
                before.update({pid: after[n] for pid, n in names.items() if n in after and after[n] is not None})
        for obj in objects:
            if isinstance(obj, torch.optim.Optimizer):  # built before prepare(): point it at the sharded parameters
                for group in obj.param_groups:
                    group["params"] = [before.get(id(p), p) for p in group["params"]]
        for i, obj in enumerate(objects):
            if isinstance(obj, torch.optim.Optimizer):
                prepared[i] = self.prepare_optimizer(obj)
        for i, obj in enumerate(objects):
            if isinstance(obj, torch.utils.data.DataLoader):
                prepared[i] = self.prepare_data_loader(obj)
            elif _is_scheduler(obj):
                prepared[i] = self.prepare_scheduler(obj)
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    def _prepare_engine(self, objects: tuple[Any, ...]) -> Any:
        models = [o for o in objects if isinstance(o, torch.nn.Module)]
        optimizers = [o for o in objects if isinstance(o, torch.optim.Optimizer)]
        if len(models) != 1 or len(optimizers) != 1:
            raise ValueError(f"accelerator.prepare(...) with DeepSpeed: pass exactly one model and its optimizer "
                             f"together (got {len(models)} model(s) and {len(optimizers)} optimizer(s)).")
        prepared = list(objects)
        engine = self.strategy.setup_engine(models[0], optimizers[0])
        for i, obj in enumerate(objects):
            if obj is models[0]:
                prepared[i] = engine
                self._models.append(engine)
            elif obj is optimizers[0]:
                prepared[i] = self.prepare_optimizer(obj)
            elif isinstance(obj, torch.utils.data.DataLoader):
                prepared[i] = self.prepare_data_loader(obj)
            elif _is_scheduler(obj):
                prepared[i] = self.prepare_scheduler(obj)
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.device_placement:
            model = self.strategy.setup_module(model)
        if all(m is not model for m in self._models):
            self._models.append(model)
        return model

    def prepare_trainer_module(self, module: torch.nn.Module, manual: bool = False) -> tuple[torch.nn.Module, Any]:
        """For the Trainer: the prepared model and the callable that runs ``training_step``
        (``manual``: the module runs its own backward and steps, see trainer/manual.py)."""
        model, step = self.strategy.setup_trainer_module(module, manual=manual)
        if all(m is not module for m in self._models):
            self._models.append(module)
        return model, step

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> AcceleratedOptimizer:
        if isinstance(optimizer, AcceleratedOptimizer):
            return optimizer
        engine_owned = hasattr(self.strategy, "setup_engine")  # DeepSpeed built its engine with it already
        wrapped = AcceleratedOptimizer(optimizer if engine_owned else self.strategy.setup_optimizer(optimizer), self)
        self._optimizers.append(wrapped)
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> AcceleratedScheduler:
        wrapped = AcceleratedScheduler(scheduler, self)
        self._schedulers.append(wrapped)
        return wrapped

    def prepare_data_loader(self, loader: torch.utils.data.DataLoader) -> PreparedDataLoader:
        """Batches on the device; with several processes each gets its share of the samples through a
        ``DistributedSampler`` (shuffle and drop_last kept; the epoch advances on every pass).

        Without drop_last the sampler pads the last samples (repeating the first ones) so every process
        runs the same number of steps; ``gather_for_metrics`` drops those repeats again.
        """
        if isinstance(loader, PreparedDataLoader):
            return loader
        from trainer.distributed_data import distribute_loader

        loader = distribute_loader(loader, self.num_processes, self.process_index, train=True)
        return PreparedDataLoader(loader, self)

    def batch_to_device(self, batch: Any) -> Any:
        return self.strategy.batch_to_device(batch) if self.device_placement else batch

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The user's original module, without strategy wrappers (DDP, compile)."""
        model = self.strategy.unwrap_module(model)
        return getattr(model, "_orig_mod", model)

    # -- the step -----------------------------------------------------------------------------
    def autocast(self) -> ContextManager:
        """The forward context of this precision (``torch.autocast`` for mixed precision)."""
        return self.strategy.forward_context()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``loss.backward()`` with loss scaling, divided by the accumulation window's length.

        The window is ``gradient_accumulation_steps`` micro-batches, or fewer for the last
        window of a prepared dataloader whose length is known, so every window averages
        over exactly its own micro-batches.
        """
        if self._window_len > 1:
            loss = loss / self._window_len
        self.strategy.backward(loss)

    @contextlib.contextmanager
    def accumulate(self, *models: torch.nn.Module) -> Iterator[None]:
        """Run one micro-step: gradients sync, and prepared optimizers and schedulers step,
        only on the window's last micro-step (or on the last batch of a prepared loader)."""
        loader = self._active_loader
        if self._micro == 0:
            left = loader.remaining + 1 if loader is not None and loader.remaining is not None else None
            k = self.gradient_accumulation_steps
            self._window_len = k if left is None else min(k, left)
        self._micro += 1
        self.step += 1
        self.sync_gradients = self._micro >= self._window_len or (loader is not None and loader.is_last)
        if self.sync_gradients:
            self._micro = 0
            yield
            return
        with self.no_sync(*models):
            yield

    @contextlib.contextmanager
    def no_sync(self, *models: torch.nn.Module) -> Iterator[None]:
        """Skip the gradient all-reduce for these models (a no-op on one device)."""
        with contextlib.ExitStack() as stack:
            for model in models:
                stack.enter_context(self.strategy.no_backward_sync(model))
            yield

    def unscale_gradients(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Undo loss scaling on the gradients (16-mixed) so they can be inspected or clipped."""
        targets = [optimizer] if optimizer is not None else self._optimizers
        for opt in targets:
            self.strategy.unscale_gradients(getattr(opt, "optimizer", opt))

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the gradient norm after unscaling; returns the total norm before clipping."""
        self.unscale_gradients()
        return self.strategy.clip_grad_norm_(parameters, max_norm, norm_type)

    def clip_grad_value_(self, parameters: Any, clip_value: float) -> None:
        self.unscale_gradients()
        self.strategy.clip_grad_value_(parameters, clip_value)

    # -- collectives ----------------------------------------------------------------------------
    def gather(self, tensor: Any) -> Any:
        """Concatenate tensors from every process along dim 0."""
        return apply_to_tensors(tensor, lambda t: self.strategy.all_gather(t).flatten(0, 1)
                                if t.dim() else self.strategy.all_gather(t))

    def gather_for_metrics(self, tensor: Any) -> Any:
        """``gather``, then, inside a prepared dataloader's loop: the samples in the sampler's order
        (the dataset's order when not shuffled) with the padding repeats of the last batch dropped,
        so a metric over everything gathered counts every sample exactly once.

        Works on tensors (and nests of them) whose first dimension is the batch dimension.
        """
        loader = self._active_loader
        sampler = loader.padded_sampler if loader is not None and self.num_processes > 1 else None
        if sampler is None:
            return self.gather(tensor)
        world = self.num_processes
        start, total = loader.samples_before, len(sampler.dataset)

        def gather_in_order(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 0:  # one value per process, not per sample
                return self.strategy.all_gather(t)
            local = t.shape[0]
            if local != loader.batch_len:  # not one row per sample of this batch: nothing to match up
                return self.strategy.all_gather(t).flatten(0, 1)
            gathered = self.strategy.all_gather(t).flatten(0, 1)
            # element (rank r, local position start + j) is sample number r + (start + j) * world of the epoch
            positions = (torch.arange(world).repeat_interleave(local)
                         + (start + torch.arange(local).repeat(world)) * world)
            order = torch.argsort(positions)
            keep = order[positions[order] < total]
            return gathered[keep.to(gathered.device)]

        return apply_to_tensors(tensor, gather_in_order)

    def reduce(self, tensor: Any, reduction: str = "sum") -> Any:
        return apply_to_tensors(tensor, lambda t: self.strategy.reduce(t, reduction))

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

    def on_main_process(self, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs) if self.is_main_process else None
        return wrapper

    def end_training(self) -> None:
        """Close every tracker (files flushed, runs finished), then release the process group."""
        for tracker in self.trackers:
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
            self._custom_objects.append(obj)

    def save_state(self, output_dir: str) -> str:
        """Save every prepared model, optimizer, scheduler, the gradient scaler, RNG states and
        registered objects into ``output_dir`` (written whole, or not at all). Returns the path."""
        from trainer.accelerator_state import save_state

        return save_state(self, output_dir)

    def load_state(self, input_dir: str, strict: bool = True) -> None:
        """Restore what ``save_state`` wrote, into the objects prepared in the same order."""
        from trainer.accelerator_state import load_state

        load_state(self, input_dir, strict=strict)

    def get_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict of ``model`` (gathered on rank zero under FSDP)."""
        full = getattr(self.strategy, "full_state_dict", None)
        if full is not None:
            return full(self.unwrap_model(model))
        return self.unwrap_model(model).state_dict()

    def save_model(self, model: torch.nn.Module, save_directory: str, max_shard_size: int | str = "10GB",
                   safe_serialization: bool = True) -> list[str]:
        """Write plain weights as safetensors, split into shards under ``max_shard_size`` with a
        ``model.safetensors.index.json``; load them with ``safetensors`` alone. Returns file names."""
        from trainer.strategies.checkpoint_io import save_weights

        if not safe_serialization:
            raise ValueError("save_model(safe_serialization=False): only safetensors is written (pickle files can "
                             "carry code). Drop the argument.")
        state = self.get_state_dict(model)
        names: list[str] = []
        if self.is_main_process:
            names = save_weights(state, save_directory, max_shard_size)
        self.wait_for_everyone()
        return names

    def skip_first_batches(self, dataloader: Any, num_batches: int) -> Any:
        """A prepared dataloader that starts at batch ``num_batches`` of the same order (to resume
        inside an epoch; restore the RNG state first so the order is the same)."""
        from trainer.data_position import skip_batches

        loader = getattr(dataloader, "loader", dataloader)
        skipped = num_batches * (getattr(loader, "batch_size", None) or 0)
        return PreparedDataLoader(skip_batches(loader, num_batches), self, skipped_samples=skipped, auto_epoch=False)


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))
