"""The training loop, and the state it owns. It reads top to bottom:

    on_fit_start; sanity validation
    for each epoch:
        for each batch (one batch of look-ahead tells which is last):
            move it to the device
            forward under the precision's context      (gradient sync skipped unless this
            backward                                     micro-batch closes the window)
            on the window's last micro-batch: normalise, clip, step, schedule, zero
            read the logged values back every `log_every_n_steps` steps
            validate when it is time
        epoch-end logging, hooks, epoch schedulers
    on_fit_end

Accumulation: a window is `accumulate_grad_batches` micro-batches, or what is left of the
epoch, each weighted by its number of items, so a step equals one big batch of the window. The
mechanics (window, sync skipping, backward, exact normalisation, clip, step, zero, step count) are
the ``StepEngine``'s (step_engine.py), the same object the Accelerator door drives.

State: the ``FitLoop`` owns it -- the counters (``TrainerState``: global step, epoch, position in
the epoch, pending validation, should_stop), the RNG states that decided the epoch's data order and
those to put back on resume, the optimizers and schedulers fit set up -- and ``state_dict()`` /
``load_state_dict()`` are what a checkpoint's ``"loops"`` entry holds. The Trainer hands the loop
its collaborators (hooks, metrics, data sources); the loop reads the Trainer's public surface only.
"""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Any

import torch

from trainer.loops import eval_loop, misuse, stop_reason
from trainer.logs.console import rank_zero_info, rank_zero_warn
from trainer.accelerate.wrappers import with_is_last
from trainer.data.data_position import (capture_epoch_start, restore_epoch_start, rng_states, set_rng_states,
                                        set_rng_states_after_first, skip_batches)
from trainer.data.datamodule import batch_mover
from trainer.data import loader_state
from trainer.data.distributed_data import default_data_seed
from trainer.loops.hooks import module_override, no_logging
from trainer.loops.manual import ModuleOptimizer, StepOptimizer
from trainer.strategies.exceptions import MisconfigurationException
from trainer.engine.optim import check_optimizer_count, parse_optimizers, step_schedulers
from trainer.loops.preemption import StopAgreement
from trainer.state import TrainerState
from trainer.engine.step_engine import count_items
from trainer.loops.step_errors import add_step_note, describe_batch
from trainer.loops.step_output import batch_end_outputs, unpack_step_output


class FitLoop:
    """``trainer.fit``'s loop and its state. One per Trainer (``trainer.fit_loop``), kept between
    calls: ``save_checkpoint`` after fit saves where it ended.

    Args:
        trainer: the Trainer (its public surface: config, state, module, model, accelerator, ...).
        metrics: the ``MetricsPublisher`` (what ``self.log`` collected, published to callbacks/loggers).
        data: the ``DataSources`` (the loaders and their batch counts).
    """

    def __init__(self, trainer: Any, metrics: Any, data: Any) -> None:
        self.trainer, self.metrics, self.data = trainer, metrics, data
        self.state: TrainerState = trainer.state  # the counters (the Trainer shows them read-only)
        self.hooks: Any = None              # the running stage's hook dispatch, given by the Trainer
        self.training_step: Any = None      # the module's, through the strategy's wrapper (DDP arms sync there)
        self.epoch_start_rng: dict | None = None  # what decided the current epoch's data order
        self.resume_rng: dict | None = None  # RNG states to put back when a resumed loop starts
        self.resume_order: dict | None = None  # a checkpoint's epoch to re-deal over this run's processes
        self.resume_stream: dict | None = None  # a checkpoint's stream epoch to re-deal by its shards
        self.reshard: Any = None             # ... and its re-dealt rest (reshard.py, sharded_stream.py)
        self.loader_position: Any = None     # the training loader's own saved position after the batch in hand
        self.resume_loader_position: Any = None  # ... as a checkpoint holds it, to load at the resume (loader_state.py)
        self.preempted = False               # SIGTERM arrived (preemption.py sets it)
        self.stop_requester: Any = None      # who last set should_stop (stop_reason.requester)
        self._told_default_epochs = False    # "fit stops after 1000 epochs" was said
        self._none_steps = 0                 # training_steps that returned None in this epoch (automatic)
        self._told_nothing_trained = False
        self.stop_agreement = StopAgreement(1)
        self.is_last_batch = False           # the current training batch is the epoch's last
        self.start_time: float | None = None
        self.optimizers: list[torch.optim.Optimizer] = []
        self.module_optimizers: list[ModuleOptimizer] = []  # what module.optimizers() hands out
        self.scheduler_configs: list = []
        self.step_schedulers: list = []      # the loop steps these (automatic optimization only)
        self.epoch_schedulers: list = []
        self.oom_splitter: Any = None           # Trainer(oom_split=True): see _train_split
        self._local_training_step: Any = None
        self._told_min = False
        self._reload_train = False  # reload_train_dataloader() was called in on_fit_start
        self._accumulate_grad_batches: int | None = None  # this epoch's, if a callback set it (else the config's)
        self._backward_hooks = self._step_hooks = (False, False)

    # -- what a checkpoint holds -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loop's state: a checkpoint's ``"loops"`` entry."""
        state = self.state
        if state.batch_idx and self.is_accumulating:
            warnings.warn(f"Saving a checkpoint in the middle of an accumulation window (batch_idx {state.batch_idx}): "
                          "the gradients accumulated since the last optimizer step are not saved.", stacklevel=4)
        reshard = self.reshard if self.reshard is not None and self.reshard.epoch == state.current_epoch else None
        epoch_end = reshard.end if reshard is not None else (self.data.num_train_batches or float("inf"))
        loops = {
            "global_step": state.global_step, "current_epoch": state.current_epoch, "batch_idx": state.batch_idx,
            "batches_seen": state.batches_seen, "samples_seen": state.samples_seen, "should_stop": state.should_stop,
            "val_pending": state.val_pending,
            # an epoch-end checkpoint: batch_idx is that epoch's length on this world size, not a position
            "epoch_trained": bool(state.batch_idx) and state.batch_idx >= epoch_end,
            "epoch_start_rng": self.epoch_start_rng,
            "results": self.metrics.results["train"].state_dict(),
            "callback_metrics": self.metrics.callback_metrics_state(),
            # what a resume on another number of processes needs to rebuild the epoch's order (reshard.py)
            "train_batch_size": getattr(self.trainer.train_dataloader, "batch_size", None),
            "train_shuffle": _distributed_shuffle(self.trainer.train_dataloader),
            "data_seed": default_data_seed(),
        }
        if reshard is not None:  # this epoch's rest was re-dealt: its order is the one that started it
            loops[reshard.checkpoint_key] = reshard.state(state.batch_idx)
        return loops

    def load_state_dict(self, loops: dict[str, Any]) -> None:
        """Put a checkpoint's ``"loops"`` entry back."""
        s = self.state
        s.global_step, s.current_epoch, s.batch_idx = loops["global_step"], loops["current_epoch"], loops["batch_idx"]
        s.batches_seen, s.samples_seen, s.should_stop = loops["batches_seen"], loops["samples_seen"], loops["should_stop"]
        s.val_pending, s.epoch_trained = loops["val_pending"], bool(loops.get("epoch_trained", False))
        self.epoch_start_rng = loops.get("epoch_start_rng")
        self.metrics.results["train"].load_state_dict(loops.get("results", {}))
        self.metrics.load_callback_metrics(loops.get("callback_metrics", {}))

    @property
    def accumulate_grad_batches(self) -> int:
        """Micro-batches per optimizer step in the current epoch: ``Trainer(accumulate_grad_batches=)``
        unless a callback set another for this epoch (``set_accumulate_grad_batches``)."""
        k = self._accumulate_grad_batches
        return self.trainer.config.accumulate_grad_batches if k is None else k

    def set_accumulate_grad_batches(self, k: int) -> None:
        """Train the next epoch with ``k`` micro-batches per optimizer step (a ``GradientAccumulationScheduler``
        calls it from ``on_train_epoch_start``). Windows start with each epoch, so a new value is exact
        from that epoch's first batch; it is refused inside a window and by a strategy that fixes it."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"set_accumulate_grad_batches({k!r}): expected a positive int of micro-batches per "
                             "optimizer step.")
        self.trainer.accelerator.strategy.refuse_unsupported(
            "accumulation_schedule", "Changing accumulate_grad_batches during fit",
            "Remove the GradientAccumulationScheduler and pass Trainer(accumulate_grad_batches=k), or use "
            "strategy='ddp' or 'fsdp'.")
        if self.is_accumulating:
            raise RuntimeError(f"set_accumulate_grad_batches({k}) inside an accumulation window (batch_idx "
                               f"{self.state.batch_idx}): the window's micro-batches were weighted for "
                               f"{self.accumulate_grad_batches}. Call it from on_train_epoch_start.")
        self._accumulate_grad_batches = k

    def replace_scheduler(self, scheduler: Any, interval: str = "epoch") -> None:
        """Step ``scheduler`` (every ``interval``) in place of the first scheduler ``configure_optimizers``
        returned, or as the only one (``StochasticWeightAveraging``'s ``SWALR``). It is checkpointed in
        that scheduler's slot."""
        from trainer.engine.optim import SchedulerConfig

        config = SchedulerConfig(scheduler, interval)
        self.scheduler_configs[:1] = [config]
        automatic = getattr(self.trainer.module, "automatic_optimization", True)
        self.step_schedulers = [s for s in self.scheduler_configs if s.interval == "step" and automatic]
        self.epoch_schedulers = [s for s in self.scheduler_configs if s.interval == "epoch" and automatic]

    def reload_train_dataloader(self) -> None:
        """Ask the datamodule (or module) for the training dataloader again right after ``on_fit_start``
        (a ``BatchSizeFinder`` changed the batch size it reads)."""
        self._reload_train = True

    @property
    def is_accumulating(self) -> bool:
        """True between micro-batches of an accumulation window (gradients not yet applied)."""
        return self.trainer.accelerator.engine.in_window

    # -- set-up ------------------------------------------------------------------------------------
    def setup_optimizers(self, module: Any) -> None:
        """``configure_optimizers``: the optimizers (through the strategy) and the schedulers."""
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"{type(module).__name__} has no trainable parameters (none with requires_grad=True), "
                             "so fit has nothing to optimize. Unfreeze some parameters, or use "
                             "trainer.validate/test/predict to only evaluate.")
        automatic = getattr(module, "automatic_optimization", True)
        optimizers, schedulers = parse_optimizers(no_logging(module, "configure_optimizers",
                                                             module.configure_optimizers)(), automatic)
        if automatic:
            check_optimizer_count(optimizers, module)
        # the module was set up by prepare_trainer_module; the strategy prepares its optimizers and returns the
        # driver the engine steps them with (DeepSpeed's wraps the engine it builds over the module and optimizer)
        accelerator = self.trainer.accelerator
        _, self.optimizers, driver = accelerator.strategy.prepare([], optimizers)
        accelerator.engine.plan(driver=driver)
        self.module_optimizers = [ModuleOptimizer(opt, self.trainer) for opt in self.optimizers]
        self.scheduler_configs = schedulers
        # in manual optimization the module steps its schedulers itself (as in Lightning)
        self.step_schedulers = [s for s in schedulers if s.interval == "step" and automatic]
        self.epoch_schedulers = [s for s in schedulers if s.interval == "epoch" and automatic]
        # the module's own backward / optimizer_step / optimizer_zero_grad, called in place of the loop's (as
        # Lightning calls them); a strategy whose engine runs the backward itself refuses the first
        self._step_loss: torch.Tensor | None = None  # the last training step's loss, for optimizer_closure
        self.custom_backward = module_override(module, "backward") if automatic else None
        self.custom_step = module_override(module, "optimizer_step") if automatic else None
        self.custom_zero_grad = module_override(module, "optimizer_zero_grad") if automatic else None
        if self.custom_backward is not None:
            accelerator.strategy.refuse_unsupported(
                "module_backward", f"{type(module).__name__}.backward(...) overridden",
                "Put work around the backward in on_before_backward(loss) / on_after_backward(), or use manual "
                "optimization (self.automatic_optimization = False).")
        # the module's own scheduler stepping and clipping, when it overrides Lightning's hooks for them
        self.scheduler_step = module_override(module, "lr_scheduler_step") if automatic else None
        self.custom_clip = module_override(module, "configure_gradient_clipping") if automatic else None

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, train_loader: Any, val_loaders: list[Any]) -> None:
        trainer, state, hooks, data = self.trainer, self.state, self.hooks, self.data
        if self.resume_order is not None:  # before anything runs: a rest that cannot be re-dealt is refused
            self._reshard_epoch(train_loader)
        if self.resume_stream is not None:  # the same, for a stream sharded by files or ranges
            self._restream_epoch(train_loader)
        num_batches = data.count_train_batches(train_loader)
        for loader in val_loaders:  # an empty or unusable val loader fails now, not after an epoch
            data.eval_limit("validate", loader)
        eval_loop.check_step_signature(trainer.module, "validate", len(val_loaders), "trainer.fit")
        val_every = val_check_batches(trainer.config, num_batches) if val_loaders else None
        self.metrics.log_hyperparams()
        self._accumulate_grad_batches = None  # each fit starts from the Trainer's setting
        cfg = trainer.config
        if cfg.max_epochs is None and cfg.max_steps == -1 and cfg.max_time is None and not self._told_default_epochs:
            self._told_default_epochs = True  # Lightning's default too; said once per Trainer
            rank_zero_info(f"Trainer(): none of max_epochs, max_steps, max_time was given, so fit stops after "
                           f"{cfg.epochs_limit} epochs. Pass max_epochs=... to choose (-1: no limit).")
        misuse.warn_misnamed_hooks(trainer.module, trainer.callbacks)
        misuse.note_validation_skipped(trainer.module, bool(val_loaders))
        hooks("on_fit_start")
        if self._reload_train:  # a BatchSizeFinder set the batch size the loader is built with
            self._reload_train = False
            data.train_loader = None
            train_loader = data.fit_train_loader()
            num_batches = data.count_train_batches(train_loader)
            val_every = val_check_batches(trainer.config, num_batches) if val_loaders else None
        if val_loaders and trainer.config.num_sanity_val_steps != 0:
            state.stage = "sanity_check"
            # the check leaves every RNG as it found it (Lightning's isolate_rng): the validation loaders' iterators
            # draw their base seed from torch's stream, so the training shuffle would otherwise depend on it
            before_check = rng_states()
            hooks("on_sanity_check_start")
            self._validate(val_loaders, "sanity_check")
            hooks("on_sanity_check_end")
            set_rng_states(before_check)
            state.stage = "fit"
        self._run_epochs(train_loader, val_loaders, num_batches, val_every)
        hooks("on_fit_end")

    def _run_epochs(self, train_loader: Any, val_loaders: list[Any], num_batches: int | None,
                    val_every: int | None) -> None:
        trainer, state, hooks = self.trainer, self.state, self.hooks
        self.start_time = time.monotonic()
        self.oom_splitter = self._make_splitter()
        results = self.metrics.results["train"]
        fresh_epoch = state.batch_idx == 0 and not state.epoch_trained
        if fresh_epoch:
            results.reset()  # values logged in on_train_start count in the first epoch's (as in Lightning)
        trainer.module.log_into(results)
        state.stop_reason = None
        cfg = trainer.config  # a second fit() with the same limits (max_time counts from this fit's start)
        if fresh_epoch and (state.current_epoch >= cfg.epochs_limit or 0 <= cfg.max_steps <= state.global_step):
            rank_zero_info(f"fit() has nothing left to train: {self._stop_reason()}. Raise the limit (max_epochs, "
                           "max_steps, max_time) to train further, or build a new Trainer to start over.")
        self._epoch_level_hook("on_train_start")
        if self.resume_rng is not None:
            set_rng_states(self.resume_rng)  # every random stream continues from the checkpoint
            self.resume_rng = None
            if state.val_pending:
                state.val_pending = False
                self._validate(val_loaders)  # it was due right after the checkpoint was taken
        while not self._should_stop_now():
            start = state.batch_idx  # > 0 only when resuming inside an epoch
            if start == 0 and trainer.config.reload_dataloaders_every_n_epochs:
                train_loader = self.data.reload(train_loader, val_loaders)
                num_batches = self.data.num_train_batches
                val_every = val_check_batches(trainer.config, num_batches) if val_loaders else None
            _set_sampler_epoch(train_loader, state.current_epoch)
            trainer.module.train()
            if start == 0 and not fresh_epoch:
                results.reset()
            fresh_epoch = False
            self._epoch_level_hook("on_train_epoch_start")
            seen, completed = state.batches_seen, True
            if not state.epoch_trained and (num_batches is None or start < num_batches or self.reshard is not None):
                batches = self._epoch_batches(train_loader, num_batches, start)
                if trainer.profiler is not None:
                    batches = trainer.profiler.profile_iterable(batches, "train_dataloader_next")
                self._none_steps = 0
                completed = self._train_epoch(batches, start, val_loaders, val_every)
                if self._none_steps and self._none_steps >= state.batches_seen - seen and not self._told_nothing_trained:
                    self._told_nothing_trained = True
                    rank_zero_warn(misuse.NOTHING_TRAINED.format(batches=state.batches_seen - seen,
                                                                 epoch=state.current_epoch))
            if state.batches_seen == seen and start == 0:
                raise ValueError(f"fit(train_dataloaders=...): epoch {state.current_epoch} yielded no batch. Check that "
                                 "the dataset is not empty, that batch_size is not larger than it with drop_last=True, "
                                 "and that an iterable dataset can be iterated more than once.")
            if not completed:
                # A limit (max_steps, max_time, should_stop) ended fit inside the epoch: the epoch is not
                # over, so no epoch-end hooks and no epoch count; a checkpoint taken now resumes right here.
                self.metrics.publish_train(epoch_end=True)
                break
            self._end_train_epoch()
        state.stop_reason = self._stop_reason()
        hooks("on_train_end")

    def _epoch_level_hook(self, name: str) -> None:
        """``on_train_start`` / ``on_train_epoch_start``: what they log defaults to on_epoch (Lightning's)."""
        results = self.metrics.results["train"]
        results.in_step = False
        try:
            self.hooks(name)
        finally:
            results.in_step = True

    def _reshard_epoch(self, train_loader: Any) -> None:
        """The checkpoint stopped inside an epoch dealt over another number of processes: re-deal its rest."""
        from trainer.data.reshard import plan_for_resume

        pending, self.resume_order = self.resume_order, None
        assert pending is not None  # run() calls this when a checkpoint's epoch waits
        self.reshard = plan_for_resume(self, train_loader, pending)
        if self.reshard is None:
            self.state.epoch_trained = True  # nothing of it remains
            return
        self.state.batch_idx = self.reshard.start
        world = self.trainer.world_size
        rank_zero_info(f"The checkpoint was saved by {pending['saved_world']} process(es) inside epoch "
                       f"{self.state.current_epoch}: its remaining {len(self.reshard.order) - self.reshard.origin['consumed']}"
                       f" sample(s) are dealt over {world} in {len(self.reshard.steps)} step(s) of up to "
                       f"{world} x {train_loader.batch_size}.")

    def _restream_epoch(self, train_loader: Any) -> None:
        """The checkpoint stopped inside a stream's epoch on another number of processes (or inside a rest
        re-dealt before): deal the samples no rank trained over this run's processes."""
        from trainer.data.sharded_stream import plan_stream_resume

        pending, self.resume_stream = self.resume_stream, None
        assert pending is not None  # run() calls this when a checkpoint's stream epoch waits
        self.reshard = plan_stream_resume(self, train_loader, pending)
        self.loader_position = None  # the rest's place is the loop's (StreamRest.state), not the loader's
        if self.reshard is None:
            self.state.epoch_trained = True  # nothing of it remains
        else:
            self.state.batch_idx = self.reshard.start

    def _make_splitter(self) -> Any:
        """``Trainer(oom_split=True)``: the splitter, and the strategy's ``training_step`` without sync."""
        trainer = self.trainer
        if not trainer.config.oom_split:
            return None
        from trainer.loops.oom import BatchSplitter

        if getattr(trainer.module, "automatic_optimization", True) is False:
            raise ValueError("Trainer(oom_split=True) splits micro-batches of the loop's own optimization, but "
                             f"{type(trainer.module).__name__} sets automatic_optimization = False. Split the batch in "
                             "your training_step instead, or remove oom_split=True.")
        strategy = trainer.accelerator.strategy
        self._local_training_step = eval_loop.without_batch_idx(trainer.module.training_step,
                                                                strategy.local_training_step(trainer.module))
        return BatchSplitter(trainer.module, strategy.root_device)

    def _epoch_batches(self, loader: Any, num_batches: int | None, start: int) -> Any:
        """This epoch's batches from position ``start``, as ``(batch, is_last)``.

        A fresh epoch records the RNG states that decide its order; a resumed one replays them,
        skips ``start`` batches, and puts the current RNG states back once the loader has drawn
        its order (see data_position.py).
        """
        if start == 0:
            self.epoch_start_rng = capture_epoch_start(loader)
            self.reshard = None  # a re-dealt epoch (reshard.py) is over
            batches = loader
        elif self.reshard is not None:  # the rest of an epoch begun on another number of processes
            now, plan = rng_states(), self.reshard
            items = plan.weighted(with_is_last(plan.loader(loader, start)), self.trainer.accelerator.engine, start,
                                  self.accumulate_grad_batches)
            return set_rng_states_after_first(items, now)
        else:
            now = rng_states()
            position, self.resume_loader_position = self.resume_loader_position, None
            if position is not None and loader_state.saveable(loader) is not None:
                loader_state.saveable(loader).load_state_dict(position)  # reads on from there: nothing again
                batches = loader
            else:
                assert self.epoch_start_rng is not None  # restored with the checkpoint that stopped inside the epoch
                restore_epoch_start(loader, self.epoch_start_rng)
                batches = skip_batches(loader, start)
                loader_state.say_rereading(loader, start, self.state.current_epoch)
        owner = loader_state.saveable(loader)
        if owner is not None:  # its position, read as each batch arrives (with_is_last looks one ahead)
            batches = loader_state.with_positions(batches, owner)
        if num_batches is not None:
            batches = itertools.islice(batches, num_batches - start)
        items = with_is_last(batches)
        if owner is not None:
            items = loader_state.track(items, self)
        return items if start == 0 else set_rng_states_after_first(items, now)

    def _train_epoch(self, batches: Any, start: int, val_loaders: list[Any], val_every: int | None) -> bool:
        """Train on ``batches``; returns False when a limit stopped it before the epoch's end."""
        trainer, state, hooks = self.trainer, self.state, self.hooks
        cfg, accel = trainer.config, trainer.accelerator
        module, model = trainer.module, trainer.model
        # through the strategy's wrapper (DDP arms gradient sync there); without batch_idx if it takes none
        training_step = eval_loop.without_batch_idx(module.training_step, self.training_step)
        results = self.metrics.results["train"]
        optimizer = self.optimizers[0]
        k = self.accumulate_grad_batches  # the epoch's (a GradientAccumulationScheduler may have set it)
        has_batch_start, has_batch_end = hooks.has("on_train_batch_start"), hooks.has("on_train_batch_end")
        self._backward_hooks = (hooks.has("on_before_backward"), hooks.has("on_after_backward"))
        validate_this_epoch = val_loaders and (cfg.check_val_every_n_epoch is None
                                               or (state.current_epoch + 1) % cfg.check_val_every_n_epoch == 0)
        self._step_hooks = (hooks.has("on_before_optimizer_step"), hooks.has("on_before_zero_grad"))
        # no autocast and no DDP: call training_step without entering (null) contexts on every micro-batch
        plain_forward = not accel.strategy.has_step_contexts
        max_steps, max_time = cfg.max_steps, cfg.max_time  # the epoch limit cannot be reached inside an epoch
        manual = not getattr(module, "automatic_optimization", True)  # the module steps (see manual.py)
        log_every = cfg.log_every_n_steps
        module.log_into(results)
        splitter = self.oom_splitter  # Trainer(oom_split=True): see _train_split
        move_batch = batch_mover(trainer)  # the strategy's transfer, or the batch-transfer hooks
        engine = accel.engine
        engine.plan(accumulation=k, progress=state, optimizers=[optimizer], count_every_step=manual)
        engine.reset_window()
        for batch_idx, (batch, is_last) in enumerate(batches, start):
            batch = move_batch(batch, 0)
            size = count_items(batch)
            if size == 0:
                raise ValueError(f"The training dataloader yielded an empty batch at batch_idx {batch_idx} (epoch "
                                 f"{state.current_epoch}): {describe_batch(batch)}. A mean over no samples is NaN. "
                                 "Drop empty batches in the dataset or collate_fn (or use drop_last=True).")
            size = size or 1
            results.batch_size = size
            if has_batch_start and hooks("on_train_batch_start", batch, batch_idx) == -1:
                break  # the module asked to end the epoch here
            closes_window = engine.begin_micro(size, is_last)
            self.is_last_batch = is_last
            steps_before = state.global_step
            logged_before = state.batches_seen if manual else steps_before  # Lightning's log cadence counts batches
            try:
                if manual:  # training_step runs its own backward and steps; k is 1
                    with accel.autocast():
                        output = training_step(batch, batch_idx)
                elif splitter is not None:
                    output = self._train_split(splitter, batch, batch_idx, size)
                elif plain_forward:
                    output = training_step(batch, batch_idx)
                    self._micro_step(output, batch_idx)
                else:
                    with engine.sync_context((model,), closes_window):  # all-reduce only at the window's end
                        with accel.autocast():
                            output = training_step(batch, batch_idx)
                        self._micro_step(output, batch_idx)
            except Exception as err:  # what the batch was / where its tensors live (step_errors.py)
                add_step_note(err, module, batch, "training_step", batch_idx)
                raise
            state.batch_idx = batch_idx + 1
            state.batches_seen += 1
            state.samples_seen += size
            stepped = state.global_step != steps_before if manual else closes_window and engine.window.has_loss
            if stepped and not manual:
                if splitter is not None:
                    accel.strategy.all_reduce_gradients(optimizer)  # the split micro-batches ran without sync
                self._optimizer_step(optimizer, batch_idx)
            state.val_pending = bool(validate_this_epoch) and _is_val_time(cfg, state, batch_idx, is_last, val_every)
            if has_batch_end:
                outputs = output if manual else batch_end_outputs(output)
                hooks("on_train_batch_end", outputs, batch, batch_idx)  # a checkpoint taken here resumes after it
            # drop the step's loss now, as a plain loop does: kept until the next training_step returned, its
            # autograd graph (the nodes; backward freed their tensors) outlived the next forward, and those small
            # blocks between its activations raised peak RSS on the demo workload by 2-4% (heap fragmentation)
            output = outputs = None
            if (state.batches_seen if manual else state.global_step) // log_every != logged_before // log_every:
                self.metrics.publish_train(epoch_end=False)  # crossed a multiple of log_every_n_steps
            if state.val_pending:
                state.val_pending = False  # a checkpoint written during validation must not repeat it
                # its rows sit where Lightning's do: before this batch is counted on the x axis if it stepped
                self.metrics.eval_step = self.metrics.stepped_batches() - (1 if manual or stepped else 0)
                try:
                    self._validate(val_loaders)
                finally:
                    self.metrics.eval_step = None
                self._sync_should_stop()
            # a SIGTERM on any rank stops every rank at this step: polled every few steps, settled
            # (blocking) at the epoch's last step so that a pending stop is never lost (preemption.py)
            if closes_window and (self.stop_agreement.settle(self.preempted) if is_last
                                  else self.stop_agreement.poll(self.preempted)):
                self._preempt()
            if stepped and not is_last and ((state.should_stop and self.stop_requested())
                                            or 0 <= max_steps <= state.global_step
                                            or (max_time is not None and self._time_is_up())):
                return False
        return True

    def _micro_step(self, output: Any, batch_idx: int, piece_size: int | None = None) -> None:
        """Check the step's output, weight its loss for the window, backward (with the hooks around it).
        ``piece_size``: the items of one piece of an ``oom_split`` micro-batch."""
        loss, num_items = unpack_step_output(output, self.state, batch_idx)
        if loss is None:
            self._none_steps += 1
            return
        self.metrics.results["train"].record_loss(loss, self.state.global_step, batch_idx)
        engine = self.trainer.accelerator.engine
        loss = engine.scale_loss(loss, num_items, piece_size)  # the piece reached its backward (oom_split reads it)
        before, after = self._backward_hooks
        if before:
            self.hooks("on_before_backward", loss)
        if self.custom_step is not None:
            self._step_loss = loss.detach()  # what optimizer_closure returns (detached: no graph kept to the step)
        if self.custom_backward is None:
            engine.backward(loss)
        else:
            engine.backward_by(self.custom_backward, loss)
        if after:
            self.hooks("on_after_backward")

    def _train_split(self, splitter: Any, batch: Any, batch_idx: int, size: int) -> Any:
        """``oom_split``: train the micro-batch, in pieces of the size that fits (trainer/loops/oom.py). Every
        piece runs without gradient sync, whatever the strategy; the loop syncs once per window."""
        accel, results, step = self.trainer.accelerator, self.metrics.results["train"], self._local_training_step
        engine = accel.engine

        def train_piece(piece: Any, n: int) -> Any:
            results.batch_size = n
            with engine.piece() as window:  # a piece that fails does not count
                try:
                    with accel.autocast():
                        output = step(piece, batch_idx)
                    self._micro_step(output, batch_idx, piece_size=n)
                except Exception:
                    splitter.backward_started = window.in_backward
                    raise
            return output

        return splitter.run(batch, size, train_piece, engine.window.has_loss)

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, batch_idx: int) -> None:
        """Normalise the window exactly, unscale and clip, step the optimizer and the step-schedulers, zero
        (the module's optimizer_step / optimizer_zero_grad when it overrides them)."""
        hooks, state, engine = self.hooks, self.state, self.trainer.accelerator.engine
        engine.finish_window(optimizer)
        before_zero = self._step_hooks[1]
        if self.custom_step is None and self.custom_zero_grad is None:
            self._prepare_step(optimizer)
            engine.step(optimizer)  # counts state.global_step
            if before_zero:
                hooks("on_before_zero_grad", optimizer)
            engine.zero_grad(optimizer)
        else:
            self._module_step(optimizer, batch_idx)
        if self.step_schedulers:
            if self._plateau_needs_agreement:  # every rank reduces its rate on rank zero's values
                self.metrics.publish_train(epoch_end=False, log=False)
            step_schedulers(self.step_schedulers, "step", state.global_step, self.metrics.callback_metrics,
                            self.scheduler_step)

    def _prepare_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Before the step: unscale if anything reads the gradients, on_before_optimizer_step, clipping."""
        cfg, engine = self.trainer.config, self.trainer.accelerator.engine
        clip, custom_clip = cfg.gradient_clip_val, self.custom_clip
        if clip or custom_clip is not None:
            engine.unscale(optimizer)  # the hook and the clipping see true gradients
        if self._step_hooks[0]:
            self.hooks("on_before_optimizer_step", optimizer)
        if custom_clip is not None:  # the module's configure_gradient_clipping (it may clip with self.clip_gradients)
            with engine.timed("configure_gradient_clipping"):
                custom_clip(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=cfg.gradient_clip_algorithm)
        elif clip:
            engine.clip(optimizer, clip, cfg.gradient_clip_algorithm)

    def _module_step(self, optimizer: torch.optim.Optimizer, batch_idx: int) -> None:
        """The step through the module's optimizer_step / optimizer_zero_grad overrides (Lightning's hooks):
        each gets a StepOptimizer (its step and zero_grad go through the engine). optimizer_step gets the
        closure that prepares the step; an override that never calls it would skip clipping and the hook
        unnoticed, so that is refused, as Lightning refuses it."""
        engine, epoch, module = self.trainer.accelerator.engine, self.state.current_epoch, self.trainer.module
        prepared: list[bool] = []

        def prepare() -> None:
            if not prepared:
                prepared.append(True)
                self._prepare_step(optimizer)

        called: list[bool] = []

        def optimizer_closure() -> Any:
            called.append(True)
            prepare()
            return self._step_loss

        wrapped = StepOptimizer(optimizer, self.trainer, prepare)
        if self.custom_step is None:
            prepare()
            engine.step(optimizer)  # counts state.global_step
        else:
            self.custom_step(epoch, batch_idx, wrapped, optimizer_closure)
            self._step_loss = None
            if not called:
                raise MisconfigurationException(
                    f"{type(module).__name__}.optimizer_step(epoch={epoch}, batch_idx={batch_idx}, optimizer, "
                    "optimizer_closure) returned without calling optimizer_closure. It gets the step ready "
                    "(on_before_optimizer_step, gradient clipping) and returns the loss; call it, usually as "
                    "optimizer.step(closure=optimizer_closure), or optimizer_closure() alone to skip this step.")
        if self._step_hooks[1]:
            self.hooks("on_before_zero_grad", optimizer)
        if self.custom_zero_grad is None:
            engine.zero_grad(optimizer)
        else:
            self.custom_zero_grad(epoch, batch_idx, wrapped)

    def _end_train_epoch(self) -> None:
        """Epoch-end order: the module's hook (it may log epoch values), then the epoch metrics are
        published, then the callbacks' hook (so they see everything), then epoch schedulers."""
        state, results = self.state, self.metrics.results["train"]
        results.in_step = False
        self.hooks.module("on_train_epoch_end")
        self.metrics.publish_train(epoch_end=True)
        published = results.weights()
        self.hooks.callbacks("on_train_epoch_end")
        if results.weights() != published or results.has_pending() or self.trainer.world_size > 1:
            self.metrics.publish_late_epoch_values(published)  # what callbacks logged there (Callback.log)
        results.in_step = True
        self._sync_should_stop()
        state.current_epoch += 1
        state.batch_idx, state.epoch_trained = 0, False
        if self.epoch_schedulers:
            step_schedulers(self.epoch_schedulers, "epoch", state.current_epoch, self.metrics.callback_metrics,
                            self.scheduler_step)

    @property
    def _plateau_needs_agreement(self) -> bool:
        return self.trainer.world_size > 1 and any(c.is_plateau for c in self.step_schedulers)

    def _validate(self, val_loaders: list[Any], stage: str = "validate") -> None:
        if stage == "validate" and self.trainer.world_size > 1:
            # callbacks deciding at validation end on a training value see rank zero's, on every rank
            self.metrics.publish_train(epoch_end=False, log=False)
        eval_loop.run_validation(self.trainer, val_loaders, stage, self.hooks, self.metrics, self.data.eval_limit)

    # -- when to stop --------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """``should_stop`` (set by a callback or the module), honoured once ``min_epochs`` and ``min_steps``
        are reached; before that it is cleared, as in Lightning, so that it can be asked again."""
        state, cfg = self.state, self.trainer.config
        if not state.should_stop:
            return False
        if (cfg.min_epochs or 0) <= state.current_epoch and (cfg.min_steps or 0) <= state.global_step:
            return True
        state.should_stop = False
        if not self._told_min:
            self._told_min = True
            rank_zero_info(f"Trainer was asked to stop at global_step {state.global_step} (epoch {state.current_epoch}); "
                           f"it continues until min_epochs={cfg.min_epochs} and min_steps={cfg.min_steps} are reached.")
        return False

    def _should_stop_now(self) -> bool:
        cfg, state = self.trainer.config, self.state
        if self.stop_requested() or (cfg.max_steps != -1 and state.global_step >= cfg.max_steps):
            return True
        if state.current_epoch >= cfg.epochs_limit:
            return True
        return cfg.max_time is not None and self._time_is_up()

    def _stop_reason(self) -> str:
        cfg = self.trainer.config
        return stop_reason.describe(self.trainer, self.state.should_stop, self.stop_requester,
                                    cfg.max_time is not None and self.start_time is not None and self._time_is_up())

    def _time_is_up(self) -> bool:
        assert self.start_time is not None  # set when fit starts
        return time.monotonic() - self.start_time >= self.trainer.config.max_time

    def _sync_should_stop(self) -> None:
        """Every process stops if any one decided to (a lone stop would leave the others waiting)."""
        strategy = self.trainer.accelerator.strategy
        if strategy.world_size > 1:
            flag = torch.tensor(float(self.state.should_stop), device=strategy.root_device)
            self.state.should_stop = bool(strategy.reduce(flag, "max").item())

    def _preempt(self) -> None:
        """SIGTERM arrived (on any rank) and the optimizer step is done: save last.ckpt and leave fit."""
        from trainer.persistence.trainer_io import save_on_preemption

        self.state.stop_reason = f"SIGTERM received: stopped at global_step {self.state.global_step} to save last.ckpt"
        save_on_preemption(self.trainer)


def val_check_batches(cfg: Any, num_batches: int | None) -> int | None:
    """Validate after every this-many training batches (None: at the epoch's last batch)."""
    v = cfg.val_check_interval
    if isinstance(v, int):
        if num_batches is not None and v > num_batches and cfg.check_val_every_n_epoch is not None:
            raise ValueError(f"Trainer(val_check_interval={v}) is more than the {num_batches} training batches of "
                             "an epoch, so validation would never run. Pass a smaller int, a fraction such as 0.5, "
                             "or check_val_every_n_epoch=None to count batches across epochs.")
        return v
    if v == 1.0:
        return None
    if num_batches is None:
        raise ValueError(f"Trainer(val_check_interval={v}) is a fraction of an epoch, but the training dataloader "
                         "has no length. Pass an int number of batches instead.")
    return max(1, int(num_batches * v))


def _is_val_time(cfg: Any, state: Any, batch_idx: int, is_last: bool, every: int | None) -> bool:
    if every is None:
        return is_last
    count = state.batches_seen if cfg.check_val_every_n_epoch is None else batch_idx + 1
    return count % every == 0


def _distributed_shuffle(loader: Any) -> bool | None:
    """Whether the training loader's distributed sampler shuffles (None: no such sampler)."""
    sampler = getattr(loader, "sampler", None)
    return bool(sampler.shuffle) if isinstance(sampler, torch.utils.data.DistributedSampler) else None


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)

