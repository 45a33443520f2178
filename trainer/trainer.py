"""The ``Trainer``: configuration and wiring. The loops live in loops/fit_loop.py and loops/eval_loop.py."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from trainer.callbacks.base import Callback
from trainer.callbacks.view import TrainerView
from trainer.callbacks.logger import Logger
from trainer.callbacks.trackers import default_loggers
from trainer.callbacks.early_stopping import EarlyStopping
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.callbacks.progress import ProgressBar
from trainer.callbacks.model_summary import ModelSummary
from trainer.callbacks.progress import ProgressBar
from trainer.strategies import resolve_strategy
from trainer.strategies.checkpoint_io import BackgroundWriter
from trainer.persistence import trainer_io
from trainer.engine import interrupt
from trainer.loops import eval_loop, misuse, stop_reason
from trainer.accelerate.accelerator import Accelerator
from trainer.loops.fit_loop import FitLoop
from trainer.persistence import trainer_checkpoint
from trainer.loops.wiring import (DataSources, _callback_list, _check_barebones, _check_checkpointing, _check_module,
                            _check_num_nodes,
                            _check_plugins, _convert_sync_batchnorm, _shown, _with_module_callbacks)
from trainer.trainer_config import TrainerConfig
from trainer.data.datamodule import DataModule, check_sources, has_loader, run_prepare_data
from trainer.loops.hooks import Hooks
from trainer.engine.script_launch import apply_launch_settings, launch_settings
from trainer.logs.publish import MetricsPublisher
from trainer.module import TrainModule
from trainer.engine.compiled import from_compiled
from trainer.profiler import Profiler, ProfiledHooks, resolve_profiler, start_profiling
from trainer.loops.manual import check_manual_settings
from trainer.loops.preemption import Preempted, StopAgreement, sigterm_sets_flag
from trainer.data.seeding import set_deterministic
from trainer.state import TrainerState
from trainer.logs.console import rank_zero_info


_WIRING_ARGS = ("accelerator", "strategy", "devices", "num_nodes", "precision", "callbacks", "logger", "profiler")
# settings whose signature default is None, standing for "TrainerConfig's default unless something else decides"
# (`trainer launch`'s accumulation; barebones=True turns the three switches off and refuses an explicit True)
_NONE_IS_DEFAULT = ("accumulate_grad_batches", "enable_progress_bar", "enable_checkpointing", "enable_model_summary")


class Trainer:
    """Runs a ``TrainModule``: fit, validate, test and predict, on any strategy.

    All arguments are keyword-only. Every bad value is refused here, before training, with the value
    received, what is expected and the fix. The loop's settings, ``max_epochs`` on, are the fields of
    ``trainer.trainer_config.TrainerConfig`` (checked there; the Trainer guide says more of each).

    Args:
        accelerator: "auto" (cuda, then mps, then cpu), "cpu", "cuda"/"gpu" or "mps".
        strategy: "auto", "ddp", "fsdp", "deepspeed", "deepspeed_stage_3_offload", ... or a strategy
            object from ``trainer.strategies`` (trained on a copy of it).
        devices: "auto", a number of devices or processes, or a list of device indices.
        num_nodes: machines in the job; ranks and addresses come from the launcher's environment.
        precision: "32-true", "bf16-mixed", "16-mixed" or "bf16-true"; None picks one for the device
            and says which.
        callbacks: a ``Callback`` or a list of them; a ``ModelSummary``, a ``ProgressBar`` and a
            ``ModelCheckpoint`` are added unless turned off or given.
        logger: None (TensorBoard if installed, else CSV, under ``default_root_dir``), False (none),
            a ``Logger`` or a list of them.
        profiler: None, "simple", "pytorch" or a profiler object.
        plugins: Lightning's ``plugins=``; only a ``SLURMEnvironment`` (its auto-requeue settings) is taken,
            anything else is refused with where it goes here.
        max_epochs: epochs to train; -1 for no limit; None: 1000 unless max_steps or max_time stop first.
        max_steps: optimizer steps to train (-1: no limit).
        max_time: a time limit: seconds, a ``timedelta``, a dict such as ``{"hours": 1}`` or "DD:HH:MM:SS".
        accumulate_grad_batches: micro-batches per optimizer step; None: the ``trainer launch`` setting, else 1.
        gradient_clip_val: clip gradients to this norm (or value); None: no clipping.
        gradient_clip_algorithm: "norm" or "value".
        val_check_interval: validate every this fraction of an epoch (float) or number of batches (int).
        check_val_every_n_epoch: validate every N epochs (None: count val_check_interval across epochs).
        limit_train_batches: batches per epoch to train (int) or fraction of the epoch (float).
        limit_val_batches: likewise for validation.
        limit_test_batches: likewise for test.
        limit_predict_batches: likewise for predict.
        num_sanity_val_steps: validation batches run before training (-1: all of them).
        fast_dev_run: True (or N): a smoke test of 1 (or N) batches of each stage, one epoch, no sanity
            check and no checkpoints.
        log_every_n_steps: how often step values reach the loggers (one host sync each time).
        default_root_dir: where logs and checkpoints go unless a logger or callback says otherwise.
        enable_progress_bar: add a ``ProgressBar`` (None: yes, unless ``barebones``).
        enable_checkpointing: add a ``ModelCheckpoint`` (None: yes, unless ``barebones``).
        deterministic: True, False or "warn": torch's deterministic algorithms.
        stop_on_nonfinite_loss: a NaN or inf loss stops fit (an error naming the step), at the next read-back.
        min_epochs: train at least this many epochs, whatever stops earlier.
        min_steps: train at least this many optimizer steps.
        overfit_batches: train and validate on the same first N batches (or fraction) every epoch.
        reload_dataloaders_every_n_epochs: ask the module/datamodule for new loaders every N epochs (0: never).
        use_distributed_sampler: give each process its share of a map-style dataset.
        benchmark: cuDNN's benchmark mode (None: leave it as it is).
        detect_anomaly: run under ``torch.autograd.set_detect_anomaly``.
        inference_mode: evaluate under ``torch.inference_mode`` (else ``no_grad``).
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm on several processes.
        barebones: nothing beside the loop: no checkpointing, progress bar, summary, sanity check or loggers.
        oom_split: an out-of-memory micro-batch is split and trained in pieces, with the same update.
        enable_model_summary: add a ``ModelSummary`` (None: yes, unless ``barebones``).

    Example:
        >>> trainer = Trainer(max_epochs=3, precision="bf16-mixed", accumulate_grad_batches=4)
        >>> trainer.fit(model, train_loader, val_loader)  # doctest: +SKIP
    """

    def __init__(self, *, accelerator: str = "auto", strategy: Any = "auto", devices: Any = "auto",
                 num_nodes: int = 1, precision: Any = None, callbacks: Iterable[Callback] | Callback | None = None,
                 logger: Any = None, profiler: Any = None, plugins: Any = None,
                 max_epochs: int | None = None, max_steps: int = -1, max_time: Any = None,
                 accumulate_grad_batches: int | None = None, gradient_clip_val: float | None = None,
                 gradient_clip_algorithm: str = "norm", val_check_interval: int | float = 1.0,
                 check_val_every_n_epoch: int | None = 1, limit_train_batches: int | float | None = None,
                 limit_val_batches: int | float | None = None, limit_test_batches: int | float | None = None,
                 limit_predict_batches: int | float | None = None, num_sanity_val_steps: int = 2,
                 fast_dev_run: bool | int = False, log_every_n_steps: int = 50, default_root_dir: str = "runs",
                 enable_progress_bar: bool | None = None, enable_checkpointing: bool | None = None,
                 deterministic: bool | str = False, stop_on_nonfinite_loss: bool = True,
                 min_epochs: int | None = None, min_steps: int | None = None, overfit_batches: int | float = 0.0,
                 reload_dataloaders_every_n_epochs: int = 0, use_distributed_sampler: bool = True,
                 benchmark: bool | None = None, detect_anomaly: bool = False, inference_mode: bool = True,
                 sync_batchnorm: bool = False, barebones: bool = False, oom_split: bool = False,
                 enable_model_summary: bool | None = None, **unknown: Any) -> None:
        # the settings as given, by name (read before any other local exists); None for the four whose
        # default depends on something else: TrainerConfig's own default then applies
        given = locals()
        loop_settings = {name: given[name] for name in TrainerConfig.__dataclass_fields__
                         if not (name in _NONE_IS_DEFAULT and given[name] is None)}
        from trainer.strategies import SLURMEnvironment

        # SLURM auto-requeue settings (Trainer(plugins=[SLURMEnvironment(...)])); ranks come from the environment
        self.slurm_environment = _check_plugins(plugins) or SLURMEnvironment()
        if unknown:  # Python's own TypeError would not say which name was meant
            from trainer.strategies.support import did_you_mean
            name = sorted(unknown)[0]
            known = [*TrainerConfig.__dataclass_fields__, *_WIRING_ARGS]
            raise TypeError(f"Trainer({name}=...): unknown argument.{did_you_mean(name, known)}")
        launched = apply_launch_settings("Trainer", {
            "precision": precision, "strategy": None if strategy == "auto" else strategy,
            "accelerator": None if accelerator == "auto" else accelerator,
            "accumulate_grad_batches": loop_settings.get("accumulate_grad_batches")})
        precision, strategy = launched["precision"], launched["strategy"] or "auto"
        accelerator = launched["accelerator"] or "auto"
        if launched["accumulate_grad_batches"] is not None:
            loop_settings["accumulate_grad_batches"] = launched["accumulate_grad_batches"]
        if loop_settings.get("barebones"):
            _check_barebones(loop_settings, logger, callbacks, profiler)
            logger = False
        self.config = TrainerConfig(**loop_settings)
        _check_num_nodes(num_nodes)
        self.num_nodes = num_nodes
        options = launch_settings().get(strategy) if isinstance(strategy, str) else None
        # the strategy is resolved once, here; the runtime is built over it (not through Accelerator's user arguments)
        resolved = resolve_strategy(strategy, accelerator, devices, precision, options, auto_precision=True)
        self.accelerator = Accelerator.for_strategy(resolved)
        if self.config.oom_split:
            self.accelerator.strategy.refuse_unsupported("oom_split", "Trainer(oom_split=True)",
                                                         "Remove oom_split=True, or use strategy='ddp' or a single device.")
        self.callbacks: list[Callback] = _callback_list(callbacks)
        _check_checkpointing(self.config, self.callbacks)
        self.profiler: Profiler | None = resolve_profiler(profiler)  # None: nothing is timed (profiler.py)
        if self.config.enable_model_summary and not any(isinstance(c, ModelSummary) for c in self.callbacks):
            self.callbacks.append(ModelSummary())
        if self.config.enable_progress_bar and not any(isinstance(c, ProgressBar) for c in self.callbacks):
            self.callbacks.append(ProgressBar())
        self.loggers: list[Logger] = default_loggers(logger, self.config)
        self.state = TrainerState()
        self.module: TrainModule | None = None
        self._model: Any = None  # the module as the strategy wrapped it (DDP, FSDP, an engine)
        self._metrics = MetricsPublisher(self)
        self._data = DataSources(self)
        self._hooks: Hooks | None = None  # each stage builds its own (see _run)
        self.fit_loop = FitLoop(self, self._metrics, self._data)  # owns fit's state (what a checkpoint saves)
        self._background_writes = BackgroundWriter()  # ModelCheckpoint(async_save=True)
        self.predict_batch_indices: list | None = None
        self.predictions: list | None = None
        if self.config.enable_checkpointing and self.checkpoint_callback is None and not self.config.fast_dev_run:
            self.callbacks.append(ModelCheckpoint())

    datamodule: DataModule | None = None  # the DataModule of the running (or last) stage
    interrupted: bool = False  # a KeyboardInterrupt or SIGTERM ended the last stage
    ckpt_path: str | None = None  # the checkpoint validate/test/predict loaded weights from last

    # -- read-only state ---------------------------------------------------------------------
    global_step = property(lambda self: self.state.global_step)
    current_epoch = property(lambda self: self.state.current_epoch)
    strategy = property(lambda self: self.accelerator.strategy)
    precision = property(lambda self: self.accelerator.precision)
    world_size = property(lambda self: self.accelerator.strategy.world_size)
    global_rank = property(lambda self: self.accelerator.strategy.global_rank)
    local_rank = property(lambda self: self.accelerator.strategy.local_rank)
    is_global_zero = property(lambda self: self.accelerator.strategy.is_global_zero)
    sanity_checking = property(lambda self: self.state.stage == "sanity_check")
    training = property(lambda self: self.state.stage == "fit")
    validating = property(lambda self: self.state.stage == "validate")
    testing = property(lambda self: self.state.stage == "test")
    predicting = property(lambda self: self.state.stage == "predict")
    num_devices = property(lambda self: max(self.world_size // self.num_nodes, 1))  # processes per machine
    lightning_module = property(lambda self: self.module)  # Lightning's name for the running module
    callback_metrics = property(lambda self: self._metrics.callback_metrics)
    logged_metrics = property(lambda self: self._metrics.logged_metrics)
    progress_bar_metrics = property(lambda self: self._metrics.progress_bar_metrics)
    logger = property(lambda self: self.loggers[0] if self.loggers else None)
    optimizers = property(lambda self: list(self.fit_loop.optimizers))
    lr_scheduler_configs = property(lambda self: list(self.fit_loop.scheduler_configs))
    max_epochs = property(lambda self: self.config.max_epochs)
    max_steps = property(lambda self: self.config.max_steps)
    log_every_n_steps = property(lambda self: self.config.log_every_n_steps)
    default_root_dir = property(lambda self: self.config.default_root_dir)
    num_training_batches = property(lambda self: self._data.num_train_batches)  # per epoch, after limits (None: no len)
    model = property(lambda self: self._model)
    train_dataloader = property(lambda self: self._data.train_loader)  # fit's, once asked for
    val_dataloaders = property(lambda self: self._data.val_loaders)  # fit's
    is_last_batch = property(lambda self: self.fit_loop.is_last_batch)  # the current training batch is the epoch's last
    accumulate_grad_batches = property(lambda self: self.fit_loop.accumulate_grad_batches)  # this epoch's
    is_accumulating = property(lambda self: self.accelerator.engine.in_window)  # inside an accumulation window
    background_writer = property(lambda self: self._background_writes)  # ModelCheckpoint(async_save=True)'s
    checkpoint_dir = property(trainer_io.checkpoint_dir)  # the ModelCheckpoint's dirpath, else root/checkpoints
    root_device = property(lambda self: self.accelerator.strategy.root_device)
    checkpoint_callbacks = property(lambda self: [c for c in self.callbacks if isinstance(c, ModelCheckpoint)])
    early_stopping_callbacks = property(lambda self: [c for c in self.callbacks if isinstance(c, EarlyStopping)])
    early_stopping_callback = property(lambda self: next(iter(self.early_stopping_callbacks), None))
    progress_bar_callback = property(lambda self: next((c for c in self.callbacks if isinstance(c, ProgressBar)), None))

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer automatic optimization steps (the first of ``optimizers``); None before fit."""
        return self.fit_loop.optimizers[0] if self.fit_loop.optimizers else None

    @property
    def estimated_stepping_batches(self) -> int | float:
        """How many optimizer steps fit will take (for a schedule's total, e.g. OneCycleLR's
        ``total_steps``): batches per epoch (this process's, after limits) / accumulation, rounded
        up, times max_epochs, capped by max_steps; inf when nothing bounds it. Usable in
        ``configure_optimizers`` (the training dataloader is asked for then, as in Lightning)."""
        return self._data.estimated_stepping_batches()

    @property
    def num_val_batches(self) -> list[int | None]:
        """Batches per validation dataloader (after ``limit_val_batches``; None without a length)."""
        return [self._data.eval_limit("validate", loader) for loader in self._data.val_loaders]

    @property
    def should_stop(self) -> bool:
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value and not self.state.should_stop:  # who asked, for the summary's "stopped:" line
            self.fit_loop.stop_requester = stop_reason.requester()
        self.state.should_stop = bool(value)

    @property
    def checkpoint_callback(self) -> Callback | None:
        return next((c for c in self.callbacks if isinstance(c, ModelCheckpoint)), None)

    # -- Lightning's read-only mirrors of the settings (trainer.limit_val_batches, ...) -----------
    @property
    def fast_dev_run(self) -> bool | int:
        return self.config.fast_dev_run

    @property
    def gradient_clip_val(self) -> float | None:
        return self.config.gradient_clip_val

    @property
    def gradient_clip_algorithm(self) -> str:
        return self.config.gradient_clip_algorithm

    @property
    def val_check_interval(self) -> int | float:
        return self.config.val_check_interval

    @property
    def check_val_every_n_epoch(self) -> int | None:
        return self.config.check_val_every_n_epoch

    @property
    def limit_train_batches(self) -> int | float | None:
        return self.config.limit_train_batches

    @property
    def limit_val_batches(self) -> int | float | None:
        return self.config.limit_val_batches

    @property
    def limit_test_batches(self) -> int | float | None:
        return self.config.limit_test_batches

    @property
    def limit_predict_batches(self) -> int | float | None:
        return self.config.limit_predict_batches

    @property
    def num_sanity_val_steps(self) -> int:
        return self.config.num_sanity_val_steps

    # -- entry points ------------------------------------------------------------------------
    def fit(self, model: TrainModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
            datamodule: DataModule | None = None, ckpt_path: str | None = None) -> None:
        """Train ``model`` on ``train_dataloaders``, validating on ``val_dataloaders`` when given.

        The data may instead come from ``datamodule`` (a ``DataModule``; ``fit(model, dm)`` works too)
        or from the module's own ``train_dataloader()``/``val_dataloader()``.
        ``ckpt_path``: resume from this checkpoint, or ``"last"``: the newest whole checkpoint in
        the checkpoint directory if there is one (else start fresh) -- the same command for the
        first run and every restart.
        """
        if ckpt_path is not None and not isinstance(ckpt_path, (str, os.PathLike)):
            raise TypeError(f"fit(ckpt_path={ckpt_path!r}): expected a path or 'last'.")
        model = from_compiled(model)  # torch.compile(model): the original module, compiled forward (compiled.py)
        if isinstance(train_dataloaders, DataModule) and datamodule is None:  # fit(model, dm), as Lightning allows
            train_dataloaders, datamodule = None, train_dataloaders
        check_sources("fit", {"train_dataloaders": train_dataloaders, "val_dataloaders": val_dataloaders}, datamodule)
        _check_module(model, "fit")
        if train_dataloaders is None and not has_loader(datamodule or model, "train"):
            raise TypeError(f"trainer.fit({type(model).__name__}(...)): no training data. Pass train_dataloaders=..., "
                            f"or datamodule=... with a train_dataloader() method, or define train_dataloader() in "
                            f"{type(model).__name__}.")
        check_manual_settings(model, self.config)
        if self._starts_ranks_here():  # ddp_spawn/ddp_fork: the ranks run this call, the results come back
            from trainer.engine.spawn import run_in_workers

            return run_in_workers(self, "fit", (model, train_dataloaders, val_dataloaders, datamodule, ckpt_path), {},
                                  model)
        self._launch_if_needed()
        self._data.start_fit(train_dataloaders, val_dataloaders)
        self._run("fit", model, lambda: self._fit(ckpt_path), datamodule)

    def validate(self, model: TrainModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
                 verbose: bool = True, datamodule: DataModule | None = None) -> list[dict[str, float]]:
        """Run ``validation_step`` over ``dataloaders`` (or the datamodule's / module's
        ``val_dataloader()``); returns one dict of metrics per dataloader. ``ckpt_path``: first load
        the weights of "best" or "last" (the checkpoint callback's) or of a path."""
        if self._starts_ranks_here():
            return self._in_workers("validate", model, dataloaders=dataloaders, ckpt_path=ckpt_path, verbose=verbose,
                                    datamodule=datamodule)
        return self._evaluate("validate", model, dataloaders, ckpt_path, datamodule,
                              lambda loaders: _shown(self._run_evaluation(loaders, "validate"), verbose))

    def test(self, model: TrainModule | None = None, dataloaders: Any = None, ckpt_path: str | None = None,
             verbose: bool = True, datamodule: DataModule | None = None) -> list[dict[str, float]]:
        """Run ``test_step`` over ``dataloaders`` (or ``test_dataloader()``); returns one dict of metrics
        per dataloader. ``ckpt_path`` as for ``validate``."""
        if self._starts_ranks_here():
            return self._in_workers("test", model, dataloaders=dataloaders, ckpt_path=ckpt_path, verbose=verbose,
                                    datamodule=datamodule)
        return self._evaluate("test", model, dataloaders, ckpt_path, datamodule,
                              lambda loaders: _shown(self._run_evaluation(loaders, "test"), verbose))

    def predict(self, model: TrainModule | None = None, dataloaders: Any = None, datamodule: DataModule | None = None,
                return_predictions: bool | None = None, ckpt_path: str | None = None) -> list[Any] | None:
        """Run ``predict_step`` over ``dataloaders`` (or ``predict_dataloader()``); returns its outputs in
        order, or None with ``return_predictions=False`` (write them with a ``BasePredictionWriter``)."""
        if self._starts_ranks_here():
            return self._in_workers("predict", model, dataloaders=dataloaders, datamodule=datamodule,
                                    return_predictions=return_predictions, ckpt_path=ckpt_path)
        keep = True if return_predictions is None else bool(return_predictions)
        return self._evaluate("predict", model, dataloaders, ckpt_path, datamodule,
                              lambda loaders: eval_loop.run_predict(self, loaders, keep, self._hooks,
                                                                    self._data.eval_limit))

    def _evaluate(self, stage: str, model: TrainModule | None, dataloaders: Any, ckpt_path: Any,
                  datamodule: Any, run: Callable[[list[Any]], Any]) -> Any:
        model = from_compiled(model)
        if model is None:  # Lightning's trainer.test(ckpt_path="best") after fit: the fitted module
            if self.module is None:
                raise TypeError(f"trainer.{stage}(): no model. Pass the model, e.g. trainer.{stage}(model, ...).")
            model = self.module
            if ckpt_path is None and getattr(self.checkpoint_callback, "best_model_path", None):
                ckpt_path = "best"  # as Lightning: without a model, the best checkpoint of the last fit
            if dataloaders is None and datamodule is None:
                datamodule = self.datamodule  # and that fit's DataModule, as Lightning
        if isinstance(dataloaders, DataModule) and datamodule is None:
            dataloaders, datamodule = None, dataloaders
        check_sources(stage, {"dataloaders": dataloaders}, datamodule)
        _check_module(model, stage)
        misuse.refuse_missing_step(model, stage, f"trainer.{stage}({type(model).__name__}(...))")
        if dataloaders is None and not has_loader(datamodule or model, stage):
            method = {"validate": "val", "test": "test", "predict": "predict"}[stage] + "_dataloader()"
            raise TypeError(f"trainer.{stage}({type(model).__name__}(...)): no data. Pass dataloaders=..., or "
                            f"datamodule=... with a {method} method, or define {method} in {type(model).__name__}.")
        path = trainer_io.eval_checkpoint(self, stage, ckpt_path)
        self._launch_if_needed()

        def body() -> Any:
            if path is not None:
                trainer_io.load_weights_for_eval(self, path, self._hooks)
                self.ckpt_path = path
            return run(self._data.stage_loaders(stage, dataloaders))
        return self._run(stage, model, body, datamodule)

    # -- wiring ------------------------------------------------------------------------------
    def _run(self, stage: str, module: TrainModule, body: Callable[[], Any], datamodule: Any = None) -> Any:
        _check_module(module, stage)
        set_deterministic(self.config.deterministic)
        if self.config.benchmark is not None:  # cuDNN picks its fastest kernels (non-deterministic); None: leave it
            torch.backends.cudnn.benchmark = self.config.benchmark
        elif self.config.deterministic is True:
            torch.backends.cudnn.benchmark = False
        self.module, self.state.stage, self.state.status = module, stage, "running"
        module.attach(self)
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        self._metrics.reset()
        self.interrupted = False
        self.callbacks = _with_module_callbacks(self.callbacks, module)
        profiler = self.profiler
        self._hooks = Hooks(self, module, [*self.callbacks, *self.loggers]) if profiler is None \
            else ProfiledHooks(self, module, [*self.callbacks, *self.loggers], profiler)
        self.fit_loop.hooks = self._hooks
        stop_profiling = start_profiling(self, profiler, stage) if profiler is not None else None
        try:
            run_prepare_data(self, datamodule, module)
            if datamodule is not None:
                datamodule.setup(stage)
            self._hooks("setup", stage)
            with self.accelerator.strategy.module_init_context():
                module.configure_model()
            if self.config.sync_batchnorm:
                _convert_sync_batchnorm(module, self.accelerator.strategy)
            cfg = self.config  # a strategy whose engine must carry the loop's settings takes them (DeepSpeed)
            self.accelerator.strategy.connect(gradient_clip_val=cfg.gradient_clip_val,
                                              gradient_clip_algorithm=cfg.gradient_clip_algorithm,
                                              accumulate_grad_batches=cfg.accumulate_grad_batches)
            manual = not getattr(module, "automatic_optimization", True)
            self._model, training_step = self.accelerator.prepare_trainer_module(module, manual=manual)
            if profiler is not None:
                training_step = profiler.wrap(training_step, "training_step")
            if stage == "fit":
                self.fit_loop.training_step = training_step
                self.fit_loop.setup_optimizers(module)
            if profiler is not None:
                profiler.stop("setup")
            with torch.autograd.set_detect_anomaly(True) if self.config.detect_anomaly else contextlib.nullcontext():
                result = body()
            trainer_io.finish_background_writes(self)
            self._metrics.finalize("success")  # loggers write what they buffered (e.g. after test)
            self.state.status = "finished"
            return result
        except Preempted:
            self.interrupted, self.state.status = True, "interrupted"
            self._metrics.finalize("preempted")
            raise SystemExit(0) from None
        except BaseException as err:
            self.interrupted, self.state.status = isinstance(err, KeyboardInterrupt), "interrupted"
            trainer_io.settle_background_writes(self._background_writes, err)
            self._hooks("on_exception", err)
            if isinstance(err, KeyboardInterrupt):  # one line per rank, not a traceback per rank (trainer/engine/interrupt.py)
                interrupt.report(self, stage, err)
            clearer = self.accelerator.strategy.explain_failure(err)  # a dead or hung rank, named
            if clearer is not None:
                raise clearer from None
            raise
        finally:
            if datamodule is not None:
                datamodule.teardown(stage)
            self._hooks("teardown", stage)
            if stop_profiling is not None:
                stop_profiling()  # prints the report on rank zero
            module.log_into(None)
            self.state.stage = "idle"

    def _fit(self, ckpt_path: str | None) -> None:
        loop, found = self.fit_loop, None
        if ckpt_path is None and self.slurm_environment.auto_requeue and self.slurm_environment.requeued():
            requeue_save = trainer_checkpoint.requeue_save(self)
            if requeue_save is not None:  # SLURM requeued this job after its warning signal: go on from there
                ckpt_path = requeue_save
        if ckpt_path is not None:
            found = trainer_checkpoint.load_for_resume(self, str(ckpt_path))
            if found is not None:
                trainer_checkpoint.restore(self, found[1], found[0], self._hooks)
                from trainer.data.loader_state import position_to_resume

                loop.resume_loader_position = position_to_resume(self, found[1], found[0])
                if self.is_global_zero:
                    rank_zero_info(f"Resuming from {found[0]} at global_step {self.global_step} (epoch "
                                   f"{self.current_epoch}, batch_idx {self.state.batch_idx}).")
        # asked for after the checkpoint's datamodule state is back, as in Lightning
        train_loader = self._data.fit_train_loader()
        if found is not None:  # its place in the epoch, now that the epoch's length is known
            from trainer.persistence.resume_checks import check_position

            check_position(found[1], found[0], self._data.count_train_batches(train_loader), train_loader,
                           self.strategy.world_size)
        val_loaders = self._data.fit_val_loaders()
        loop.stop_agreement = StopAgreement(self.strategy.world_size)
        slurm = self.slurm_environment
        with sigterm_sets_flag(loop, slurm.requeue_signal if slurm.requeues() else None):
            loop.run(train_loader, val_loaders)
        loop.stop_agreement.drain()

    def _run_evaluation(self, loaders: list[Any], stage: str) -> list[dict[str, float]]:
        return eval_loop.run_validation(self, loaders, stage, self._hooks, self._metrics, self._data.eval_limit)

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        """Write the whole training state to ``filepath`` (atomically: a crash never leaves a
        half-written file under that name). ``weights_only``: just the module's weights."""
        if self.module is None:
            raise RuntimeError("trainer.save_checkpoint(...): nothing to save yet; call it during or after fit.")
        self._background_writes.wait()  # in order: a write still running in the background lands first
        trainer_io.save_checkpoint(self, filepath, self.dump_checkpoint(weights_only))

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        """The whole training state as a checkpoint dict (call it on every rank: it gathers the
        ranks' RNG states). ``weights_only``: the module's weights and the counters."""
        ckpt = trainer_checkpoint.dump(self, weights_only, self._hooks)
        if "loops" in ckpt:
            from trainer.data.loader_state import gather_positions

            positions = gather_positions(self)  # the training loader's own position on each rank, if it keeps one
            if positions is not None:
                ckpt["loops"]["loader_positions"] = positions
        return ckpt

    def save_model(self, directory: str, max_shard_size: int | str = "10GB", module: Any = None) -> list[str]:
        """Write the module's plain weights as safetensors (sharded above ``max_shard_size``),
        loadable into a plain ``nn.Module`` without this library.

        Args:
            module: export only this submodule, by attribute path (``"model"``, ``"backbone.encoder"``)
                or as the object; its keys then carry no prefix of the TrainModule's. A Hugging Face
                model (one with ``save_pretrained``) is written in its own format, ``config.json``
                included, so ``from_pretrained(directory)`` loads it.
        """
        if self.module is None:
            raise RuntimeError("trainer.save_model(...): no module yet; call it after fit.")
        return self.accelerator.save_model(trainer_io.submodule_of(self.module, module), directory, max_shard_size)

    def refresh_callback_metrics(self) -> None:
        """Read the training values logged since the last ``log_every_n_steps`` interval back into
        ``callback_metrics`` now (one host sync), without a row for the loggers. For a callback that
        decides on a logged value between intervals (``ModelCheckpoint(monitor=...,
        every_n_train_steps=...)`` does)."""
        self._metrics.publish_train(epoch_end=False, log=False)

    # -- processes -------------------------------------------------------------------------------
    def _starts_ranks_here(self) -> bool:
        """``ddp_spawn``/``ddp_fork``/``ddp_notebook`` in a process no launcher started: this interpreter starts
        the ranks and gets their results back (trainer/engine/spawn.py)."""
        return self.strategy.needs_launch and self.strategy.start_method in ("fork", "spawn")

    def _in_workers(self, stage: str, model: Any, **kwargs: Any) -> Any:
        """validate/test/predict on the started ranks; without a model, the one the last fit left here."""
        from trainer.engine.spawn import run_in_workers

        if model is None and self.module is None:
            raise TypeError(f"trainer.{stage}(): no model. Pass the model, e.g. trainer.{stage}(model, ...).")
        # the ranks get the call as given (no model: the last fit's, with its best checkpoint, as in one process)
        return run_in_workers(self, stage, (model,), kwargs, from_compiled(model) if model is not None else self.module)

    def _launch_if_needed(self) -> None:
        """Several processes asked for in a plain ``python train.py``: start them through torch's
        elastic launcher (each re-runs this script as one rank), wait, and exit with their status."""
        if self.strategy.needs_launch:
            from trainer.engine.script_launch import launch_this_script

            launch_this_script(self.strategy.requested_processes)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` once per job (on global rank zero)."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @property
    def log_dir(self) -> str:
        return self.loggers[0].log_dir if self.loggers else self.config.default_root_dir


if TYPE_CHECKING:
    def _as_view(trainer: Trainer) -> TrainerView:
        """mypy checks here that a Trainer is what callbacks are promised: every member of ``TrainerView``."""
        return trainer
