"""``ModelCheckpoint``: save checkpoints on a schedule, keep the best k, and a ``last.ckpt``."""

from __future__ import annotations

import datetime
import math
import os
import re
import time
import warnings
from typing import Any

from trainer.strategies.checkpoint_directories import lock_directory, remove_path, unlock_directory
from trainer.strategies.checkpoint_io import non_finite_parameters
from trainer.strategies.exceptions import MisconfigurationException
from .base import Callback, MissingMetricError
from trainer.strategies.support import rank_zero_info
from .view import TrainerView

_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


def _number(value: Any) -> Any:
    """A logged value as a Python number for a file name (a one-element tensor's value)."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
        return value.item()
    return value


_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")  # a remote filesystem's URL (s3://, memory://)


def default_dirpath(trainer: TrainerView) -> tuple[str, bool]:
    """Where a ModelCheckpoint without ``dirpath`` writes (Lightning's rule): the first logger's run folder
    ``<save_dir>/<name>/<version>/checkpoints`` (``version_<N>`` for an int version; the Trainer's
    ``default_root_dir`` for a logger without a save_dir), or ``<default_root_dir>/checkpoints`` without a
    logger (or one with no name or version). Also whether it is a logger's run folder."""
    root = os.fspath(trainer.default_root_dir)
    logger = trainer.loggers[0] if trainer.loggers else None
    name = getattr(logger, "name", None)
    version = getattr(logger, "version", None) if name is not None else None
    if logger is None or name is None or version is None:
        return os.path.join(root, "checkpoints"), False
    save_dir = getattr(logger, "save_dir", None) or root
    version = version if isinstance(version, str) else f"version_{version}"
    return os.path.join(os.fspath(save_dir), str(name), version, "checkpoints"), True


def earlier_run_dirpaths(callback: Any) -> list[str]:
    """The checkpoint folders of the earlier runs beside a ModelCheckpoint's default, logger-derived
    ``dirpath`` (``<save_dir>/<name>/*/checkpoints``), newest first; none for a ``dirpath`` the user
    gave or ``<default_root_dir>/checkpoints``. A new run logs to a new version, so this is where
    ``fit(ckpt_path="last")`` finds what the run before it wrote."""
    dirpath = getattr(callback, "dirpath", None)
    if not dirpath or not getattr(callback, "_dirpath_from_logger", False):
        return []
    runs = os.path.dirname(os.path.dirname(dirpath))
    if not os.path.isdir(runs):
        return []
    found = [os.path.join(runs, d, "checkpoints") for d in os.listdir(runs)]
    found = [d for d in found if d != dirpath and os.path.isdir(d)]
    return sorted(found, key=os.path.getmtime, reverse=True)


class ModelCheckpoint(Callback):
    """Save checkpoints during ``fit``.

    Args:
        dirpath: where to write; default, as in Lightning, the first logger's run folder
            ``<save_dir>/<name>/version_N/checkpoints`` (``<name>/<version>/checkpoints`` for a
            version given as a string), or ``<default_root_dir>/checkpoints`` without a logger.
            ``fit(ckpt_path="last")`` also looks in the earlier runs' folders beside it.
        filename: a template such as ``"epoch={epoch}-step={step}-{val/loss:.3f}"``; a field not
            already written as ``name=`` gets it inserted (``{val/loss:.3f}`` -> ``val_loss=0.123``);
            ``/`` in names becomes ``_``. Default ``"epoch={epoch}-step={step}"``.
        monitor: the metric that ranks checkpoints; None keeps the latest ones.
        mode: "min" or "max" for ``monitor``.
        save_top_k: how many to keep: k, -1 for all, 0 for none (only ``last.ckpt``).
        save_last: also write ``last.ckpt`` at every save (what ``fit(ckpt_path="last")`` resumes).
        every_n_train_steps / every_n_epochs / train_time_interval: when to save (one of them;
            default every epoch, after validation when there is any).
        save_weights_only: only the module's weights (cannot resume training).
        save_on_exception: when fit fails (an error in a step, a hook or a callback; Ctrl-C), save
            the state at that point under the ``filename`` template, and ``last.ckpt`` with
            ``save_last``; not during the sanity check, with ``fast_dev_run``, before the first
            training batch, nor when this step is saved already. One process only: with several,
            the others may still be running (or hung) and cannot join the save, so it is skipped
            with a warning.
        enable_version_counter: a file of the same name already in ``dirpath`` that this callback
            did not write (an earlier run's) is kept, and the new one gets ``-v1``, ``-v2``, ...
            (``last-v1.ckpt``); False overwrites it.
        save_on_train_epoch_end: save at the training epoch's end instead of after validation.
        verbose: print a line on rank zero for each save (metric, value, path).
        auto_insert_metric_name: write ``name=`` before each field of ``filename`` that lacks it.
        async_save: write on a background thread: training stops only while the state is copied
            to CPU memory (the copy needs as much memory as the checkpoint), then goes on while the
            file is written, fsynced and renamed into place. Saves stay in order, ``last.ckpt``
            and evictions follow each write, and fit ends only once the last write is whole. With
            FSDP every rank copies its own shards and writes them behind (the same atomic directory,
            over a process group of their own); not with DeepSpeed, whose engine writes its shards.

    Its bookkeeping (the best k paths and scores) is checkpointed too, so after a resume it
    neither rescans the directory nor deletes files it did not write.

    Class attributes a subclass may change (Lightning's): ``CHECKPOINT_NAME_LAST`` (``"last"``, a
    template like ``filename``), ``FILE_EXTENSION`` (``".ckpt"``), ``CHECKPOINT_JOIN_CHAR``
    (before ``v1``) and ``STARTING_VERSION`` (1).
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(self, dirpath: str | None = None, filename: str | None = None, monitor: str | None = None,
                 mode: str = "min", save_top_k: int = 1, save_last: bool | None = None,
                 every_n_train_steps: int | None = None, every_n_epochs: int | None = None,
                 train_time_interval: datetime.timedelta | float | None = None, save_weights_only: bool = False,
                 save_on_train_epoch_end: bool | None = None, verbose: bool = False,
                 auto_insert_metric_name: bool = True, async_save: bool = False, save_on_exception: bool = False,
                 enable_version_counter: bool = True) -> None:
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"ModelCheckpoint(mode={mode!r}): expected 'min' or 'max'.")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise MisconfigurationException(f"ModelCheckpoint(save_top_k={save_top_k!r}): Must be >= -1 (an int: the "
                                            "best k, 0 for none, -1 to keep all).")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise MisconfigurationException(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: the best "
                f"{save_top_k} need a metric to rank them. Pass monitor='val/loss' (for example), or save_top_k=-1.")
        triggers = [n for n, v in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs),
                                   ("train_time_interval", train_time_interval)) if v]
        if len(triggers) > 1:
            given = (f"every_n_train_steps={every_n_train_steps!r}, every_n_epochs={every_n_epochs!r}, "
                     f"train_time_interval={train_time_interval!r}")
            raise MisconfigurationException(f"ModelCheckpoint({', '.join(f'{t}=...' for t in triggers)}): "
                                            f"Combination of parameters {given} sets {len(triggers)} schedules; "
                                            "choose one.")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise MisconfigurationException(f"ModelCheckpoint({name}={value!r}): Must be >= 0 (an int; 0 turns this "
                                                "schedule off).")
        self._time_interval_given = train_time_interval  # as passed: part of state_key, as in Lightning
        if isinstance(train_time_interval, datetime.timedelta):
            train_time_interval = train_time_interval.total_seconds()
        if save_last not in (None, True, False, "link"):
            raise MisconfigurationException(f"ModelCheckpoint(save_last={save_last!r}): expected True, False, None or "
                                            "'link' (last.ckpt is a hard link to the checkpoint of the same step "
                                            "either way).")
        if dirpath is not None and not isinstance(dirpath, (str, os.PathLike)):
            raise MisconfigurationException(f"ModelCheckpoint(dirpath={dirpath!r}): expected a directory path (str or "
                                            "pathlib.Path), or None for the logger's run folder "
                                            "(<default_root_dir>/checkpoints without a logger).")
        if dirpath is not None:  # a Path, "~/ckpts": plain absolute text (what checkpoints and comparisons hold)
            dirpath = os.fspath(dirpath)  # a URL is kept as given: setup refuses it, naming it
            dirpath = dirpath if _URL.match(dirpath) else os.path.abspath(os.path.expanduser(dirpath))
        self.dirpath, self.filename, self.monitor, self.mode = dirpath, filename, monitor, mode
        self.save_on_exception, self.enable_version_counter = save_on_exception, enable_version_counter
        self.save_top_k, self.save_last, self.save_weights_only = save_top_k, save_last, save_weights_only
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None else (0 if triggers else 1)
        self.train_time_interval = train_time_interval
        self.save_on_train_epoch_end, self.verbose = save_on_train_epoch_end, verbose
        self.auto_insert_metric_name, self.async_save = auto_insert_metric_name, async_save
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.kth_best_model_path = ""  # the worst of the best k, once k are kept (next to be replaced)
        self.kth_value: float = math.inf if mode == "min" else -math.inf
        self.current_score: float | None = None  # the monitored value at the last ranked save
        self.last_model_path = ""
        self._latest: list[str] = []  # monitor=None: paths of the newest saves, oldest first
        self._last_global_step_saved = -1
        self._last_time_saved = time.monotonic()
        self._saw_validation = False
        self._locked = False
        self._dirpath_from_logger = False  # dirpath=None: set at setup, to the logger's run folder if there is one
        self._last_saved_step = -1  # the global_step last.ckpt was last written at
        self._replaced_last: str | None = None  # a previous last file to remove once the new one is whole

    @property
    def state_key(self) -> str:
        """Lightning's key for this callback's state in a checkpoint (class name and settings)."""
        return type(self).__qualname__ + repr({
            "monitor": self.monitor, "mode": self.mode, "every_n_train_steps": self.every_n_train_steps,
            "every_n_epochs": self.every_n_epochs, "train_time_interval": self._time_interval_given})

    @property
    def _legacy_state_keys(self) -> list[str]:
        """The key checkpoints of trainer <= 0.1 stored this state under (still read on resume)."""
        return [f"ModelCheckpoint{{monitor={self.monitor!r}, mode={self.mode!r}, every_n_train_steps="
                f"{self.every_n_train_steps}, every_n_epochs={self.every_n_epochs}, "
                f"train_time_interval={self.train_time_interval}}}"]

    # -- when ---------------------------------------------------------------------------------
    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        strategy = trainer.accelerator.strategy
        if self.async_save:  # the checkpoint format must be able to copy its state aside for a background write
            strategy.checkpoint_format.require_staging("ModelCheckpoint(async_save=True)",
                                                       "Use ModelCheckpoint(async_save=False) with this strategy.")
        if self.dirpath is None:
            dirpath, self._dirpath_from_logger = default_dirpath(trainer)
            self.dirpath = strategy.broadcast(dirpath) if strategy.world_size > 1 else dirpath  # rank zero's version
        url = _URL.match(os.fspath(self.dirpath))
        if url:  # made local, it would write to a folder named after the scheme ('memory:/...') in the cwd
            raise ValueError(
                f"ModelCheckpoint(dirpath={os.fspath(self.dirpath)!r}, save_last={self.save_last!r}): {url.group(1)}:// "
                "is a remote filesystem URL, and writing checkpoints (an atomic rename per file, `last.ckpt` as a "
                "link, the directory's .lock) is only supported for local file paths. Expected a local directory: "
                "give the local path of a mounted filesystem, or copy the files to the remote store after fit.")
        self.dirpath = os.path.abspath(os.path.expanduser(os.fspath(self.dirpath)))
        if stage == "fit" and trainer.is_global_zero and not self._locked:
            lock_directory(self.dirpath)  # one writing run per directory (it cleans temporaries on resume)
            self._locked = True

    def teardown(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if self._locked:
            assert self.dirpath is not None  # locked in setup, where it is set
            unlock_directory(self.dirpath)
            self._locked = False

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        self._last_time_saved = time.monotonic()
        self._saw_validation = False

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.every_n_train_steps and not self.train_time_interval:
            return  # saves at epoch ends and validations only (the default): nothing to ask per batch
        step = trainer.global_step
        if step == self._last_global_step_saved or trainer.is_accumulating:
            return
        due_steps = self.every_n_train_steps and step % self.every_n_train_steps == 0
        due_time = self.train_time_interval and time.monotonic() - self._last_time_saved >= self.train_time_interval
        if due_steps or due_time:
            if self.monitor is not None:
                # the step's logged values are read back only at log intervals (no host sync per step);
                # this save ranks by one of them, so read them now (without a row for the loggers)
                trainer.refresh_callback_metrics()
            self._save(trainer)

    def on_validation_end(self, trainer: TrainerView, module: Any) -> None:
        if trainer.sanity_checking or not trainer.training:
            return
        self._saw_validation = True
        if not self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        if self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_train_end(self, trainer: TrainerView, module: Any) -> None:
        # fit stopped inside an epoch (max_steps, max_time): keep that point too, to resume from it
        stopped_inside = trainer.state.batch_idx > 0 and not trainer.is_accumulating
        if stopped_inside and trainer.global_step != self._last_global_step_saved:
            self._save(trainer)
        elif self.save_last and not trainer.config.fast_dev_run and trainer.global_step != self._last_saved_step:
            # no save fell on the last step (save_top_k=0, every_n_epochs beyond the run): last.ckpt is what
            # fit(ckpt_path="last") resumes from, so it holds the end of training
            if self._parameters_finite(trainer):
                self._write(trainer, None, [], None, self._last_path(trainer, self._candidates(trainer)))
                self._last_saved_step = trainer.global_step

    def on_exception(self, trainer: TrainerView, module: Any, exception: BaseException) -> None:
        if not self.save_on_exception or trainer.config.fast_dev_run or trainer.sanity_checking:
            return
        nothing_ran = trainer.global_step == 0 and trainer.current_epoch == 0 and trainer.state.batch_idx == 0
        if trainer.lightning_module is None or nothing_ran or trainer.global_step == self._last_global_step_saved:
            return  # fit failed before its first batch, or this very step is saved already
        if trainer.world_size > 1:
            if trainer.is_global_zero:
                warnings.warn(f"ModelCheckpoint(save_on_exception=True): not saving after {type(exception).__name__} "
                              f"on {trainer.world_size} processes: a save needs every process, and the others may be "
                              "still running or hung. Resume from the last scheduled checkpoint.", stacklevel=2)
            return
        try:
            if not self._parameters_finite(trainer, quiet=True):
                return
            metrics = self._candidates(trainer)
            path = self._path(trainer, metrics, versioned=False)
            trainer.save_checkpoint(path, self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
            if self.save_last:
                self._write(trainer, path, [], None, self._last_path(trainer, metrics))
            rank_zero_info(f"ModelCheckpoint: {type(exception).__name__} at global_step {trainer.global_step}; the "
                           f"state at that point is saved to {path}.")
        except Exception as err:  # noqa: BLE001 - the run's own error is what propagates; this one is noted on it
            if hasattr(exception, "add_note"):
                exception.add_note(f"ModelCheckpoint(save_on_exception=True) could not save: {type(err).__name__}: "
                                   f"{err}")

    def _on_train_epoch_end(self, trainer: TrainerView) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        return not trainer.val_dataloaders

    def _epoch_due(self, trainer: TrainerView) -> bool:
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # -- what -------------------------------------------------------------------------------
    def format_checkpoint_name(self, metrics: dict[str, float], epoch: int | None = None, step: int | None = None,
                               filename: str | None = None, ver: int | None = None) -> str:
        """The file name (no directory) for ``metrics`` at ``epoch``/``step`` (default: the values of
        ``metrics``, else 0), from ``filename`` (default: the callback's template); ``ver`` appends
        ``-v<ver>``."""
        values = {"epoch": metrics.get("epoch", 0) if epoch is None else epoch,
                  "step": metrics.get("step", 0) if step is None else step}
        values.update({k: v for k, v in metrics.items() if k not in ("epoch", "step")})
        template = filename or self.filename or "epoch={epoch}-step={step}"

        def field(match: re.Match) -> str:
            name, spec = match.group(1), match.group(2) or ""
            if name not in values:
                raise MissingMetricError(
                    f"ModelCheckpoint(filename={template!r}) uses {{{name}}}, which was not logged. Logged metrics: "
                    f"{sorted(metrics) or 'none'}.")
            before = match.string[: match.start()]
            prefix = f"{name}=" if self.auto_insert_metric_name and not before.endswith(f"{name}=") else ""
            return prefix + format(_number(values[name]), spec)  # only the fields used are read back

        name = _FIELD.sub(field, template).replace("/", "_")
        if ver is not None:
            name = f"{name}{self.CHECKPOINT_JOIN_CHAR}v{ver}"
        return name + self.FILE_EXTENSION

    def to_yaml(self, filepath: str | os.PathLike | None = None) -> None:
        """Write ``best_k_models`` (path: score) as YAML to ``filepath`` (default
        ``<dirpath>/best_k_models.yaml``)."""
        import yaml

        if filepath is None:
            if self.dirpath is None:
                raise MisconfigurationException("ModelCheckpoint.to_yaml(): no filepath and no dirpath yet (it is "
                                                "set when fit starts). Pass to_yaml('best_k_models.yaml').")
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        with open(filepath, "w") as f:
            yaml.safe_dump({k: float(v) for k, v in self.best_k_models.items()}, f)

    def _candidates(self, trainer: TrainerView) -> dict[str, Any]:
        """What ``monitor`` and the filename may name: the logged metrics, and ``epoch`` / ``step``
        (the Trainer's counters, unless logged under those names)."""
        metrics = dict(trainer.callback_metrics)
        metrics.setdefault("epoch", trainer.current_epoch)
        metrics.setdefault("step", trainer.global_step)
        return metrics

    def _save(self, trainer: TrainerView) -> None:
        if trainer.config.fast_dev_run:
            return  # as in Lightning: a fast_dev_run writes no checkpoint
        if not self._parameters_finite(trainer):
            return
        metrics = self._candidates(trainer)
        self._last_global_step_saved = trainer.global_step
        self._last_time_saved = time.monotonic()
        last = None
        if self.save_last:  # before the bookkeeping below, so that file and last.ckpt hold the same
            last = self._last_path(trainer, metrics)
        written: str | None = None
        evicted: list[str] = []
        if self.save_top_k != 0:
            if self.monitor is None:
                written, evicted = self._rank_latest(metrics, trainer)
            elif self.monitor in metrics:
                written, evicted = self._rank_by_score(metrics, trainer)
            elif self._saw_validation or not trainer.val_dataloaders:
                raise MissingMetricError(
                    f"ModelCheckpoint(monitor={self.monitor!r}): this metric was never logged. Logged metrics: "
                    f"{sorted(trainer.callback_metrics) or 'none'}. Log it with self.log({self.monitor!r}, value), or "
                    "fix the name ('epoch' and 'step' need no logging).")
        if written is None and not self.save_last:
            return
        if last is not None:
            self._last_saved_step = trainer.global_step
        if not self.async_save:
            self._write(trainer, written, evicted, None, last)
            return
        writer = trainer.background_writer
        writer.wait()  # the previous write first: one snapshot in memory, saves in order
        ckpt = trainer.dump_checkpoint(self.save_weights_only)  # every rank: it gathers the ranks' RNG states
        # the state copied now (training may change it from here on), written behind by the ranks that write
        # (rank zero's one file; every rank its own shards)
        staged = trainer.accelerator.strategy.checkpoint_format.stage(ckpt, trainer.lightning_module,
                                                                      trainer.optimizers)
        if staged is not None:
            writer.submit(lambda: self._write(trainer, written, evicted, staged, last), written or last)

    def _last_path(self, trainer: TrainerView, metrics: dict[str, Any]) -> str:
        """Where last.ckpt goes (``CHECKPOINT_NAME_LAST`` filled in); sets ``last_model_path`` (it is
        part of the checkpoint's state). When the name changed, the previous one is removed once the
        new one is written (see ``_write``)."""
        path = self._path(trainer, metrics, name=self.CHECKPOINT_NAME_LAST, reuse=self.last_model_path)
        previous, self.last_model_path = self.last_model_path, path
        if previous and previous != path and previous not in self.best_k_models and previous not in self._latest:
            self._replaced_last = previous
        return path

    def _parameters_finite(self, trainer: TrainerView, quiet: bool = False) -> bool:
        """NaN or inf weights (e.g. from a NaN gradient with a finite loss) never replace a checkpoint:
        fit stops naming the step, or with ``stop_on_nonfinite_loss=False`` this save is skipped."""
        strategy = trainer.accelerator.strategy
        bad = non_finite_parameters(trainer.lightning_module, strategy.all_gather_object)
        if not bad:
            return True
        kept = self.last_model_path or self.best_model_path
        kept = f"the last one, {kept}, is from global_step {self._last_global_step_saved}" if kept else "none yet"
        message = (f"ModelCheckpoint: the parameters are not finite at global_step {trainer.global_step} (epoch "
                   f"{trainer.current_epoch}; NaN/inf in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}), so "
                   f"no checkpoint is written and none is replaced ({kept}).")
        if trainer.config.stop_on_nonfinite_loss and not quiet:
            raise FloatingPointError(message + " A gradient was NaN or infinite though the loss was finite. Lower "
                                     "the learning rate or clip gradients (gradient_clip_val=1.0), then resume with "
                                     "fit(ckpt_path='last').")
        if trainer.is_global_zero:
            warnings.warn(message + " Training goes on (stop_on_nonfinite_loss=False).", stacklevel=2)
        return False

    def _write(self, trainer: TrainerView, written: str | None, evicted: list[str], ckpt: Any, last: str | None) -> None:
        """The checkpoint, then the evictions it replaces, then last.ckpt. ``ckpt`` is the checkpoint
        format's staged write (``write(path)``), called from the background thread (rank zero's one file,
        no collectives there; or every rank's shards, over their own group); None: save now."""
        def save(path: str) -> None:
            if ckpt is None:
                trainer.save_checkpoint(path, self.save_weights_only)
            else:
                ckpt(path)

        if written is not None:
            save(written)
            self._remove(trainer, evicted)
        if last is not None and not (written and self._link_last(trainer, written, last, collective=ckpt is None)):
            save(last)
        if last is not None and self._replaced_last:  # a templated last name moved on: the old file goes now
            self._remove(trainer, [self._replaced_last])
            self._replaced_last = None

    def _link_last(self, trainer: TrainerView, written: str, last: str, collective: bool) -> bool:
        """last.ckpt as a hard link to the checkpoint just written (the same state at the same step):
        one write per save instead of two. False where the checkpoint format cannot link (sharded
        directories) or the filesystem cannot: then last.ckpt is written in full."""
        return trainer.accelerator.strategy.checkpoint_format.link(written, last, collective)

    def _rank_latest(self, metrics: dict[str, float], trainer: TrainerView) -> tuple[str, list[str]]:
        reuse = self._latest[0] if self.save_top_k == 1 and self._latest else None  # the one this save replaces
        path = self._path(trainer, metrics, reuse=reuse)
        evicted = []
        if path not in self._latest:
            self._latest.append(path)
        if self.save_top_k != -1:
            evicted, self._latest = self._latest[: -self.save_top_k], self._latest[-self.save_top_k:]
        self.best_model_path = path
        return path, [p for p in evicted if p != path]

    def _rank_by_score(self, metrics: dict[str, float], trainer: TrainerView) -> tuple[str | None, list[str]]:
        assert self.monitor is not None  # called only with a monitor
        score = float(metrics[self.monitor])
        if math.isnan(score):
            score = math.inf if self.mode == "min" else -math.inf
        worst = self._worst()
        full = self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k
        if full and not self._better(score, self.best_k_models[worst]):
            return None, []
        path = self._path(trainer, metrics, reuse=worst if full else None)
        self.best_k_models[path] = score
        self.current_score = score
        evicted = []
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            evicted = [self._worst()]
            del self.best_k_models[evicted[0]]
        self.best_model_path = min(self.best_k_models, key=self._sort_key)
        self.best_model_score = self.best_k_models[self.best_model_path]
        k = len(self.best_k_models) if self.save_top_k == -1 else self.save_top_k
        if len(self.best_k_models) == k:
            self.kth_best_model_path = self._worst()
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        if self.verbose and trainer.is_global_zero:
            rank_zero_info(f"ModelCheckpoint: {self.monitor}={score:.6g} saved to {path}")
        return path, [p for p in evicted if p != path]

    def _sort_key(self, path: str) -> float:
        score = self.best_k_models[path]
        return score if self.mode == "min" else -score

    def _worst(self) -> str:
        return max(self.best_k_models, key=self._sort_key) if self.best_k_models else ""

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _path(self, trainer: TrainerView, metrics: dict[str, float], name: str | None = None, reuse: str | None = None,
              versioned: bool = True) -> str:
        """The file for this save in ``dirpath``. With ``enable_version_counter``, a name taken by a
        file this callback does not own (an earlier run's; not ``reuse``, the one this save replaces)
        gets ``-v1``, ``-v2``, ... as in Lightning. Rank zero decides; the others follow."""
        dirpath = self.dirpath
        assert dirpath is not None  # set in setup

        def candidate(ver: int | None) -> str:
            return os.path.join(dirpath, self.format_checkpoint_name(metrics, trainer.current_epoch,
                                                                     trainer.global_step, filename=name, ver=ver))

        path = candidate(None)
        if not versioned or not self.enable_version_counter:
            return path
        strategy = trainer.accelerator.strategy
        if trainer.is_global_zero:
            ours = {reuse, *self.best_k_models, *self._latest}
            ver = self.STARTING_VERSION
            while os.path.exists(path) and path not in ours:
                path, ver = candidate(ver), ver + 1
        return strategy.broadcast(path) if strategy.world_size > 1 else path

    def _remove(self, trainer: TrainerView, paths: list[str]) -> None:
        """Delete checkpoints this callback wrote and no longer keeps (only inside its dirpath)."""
        if not trainer.is_global_zero:
            return
        for path in paths:
            inside = os.path.dirname(os.path.abspath(path)) == self.dirpath
            if inside and path not in (self.best_model_path, self.last_model_path) and os.path.exists(path):
                remove_path(path)  # a file, or a sharded checkpoint's directory

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "monitor": self.monitor, "mode": self.mode,
                "best_k_models": dict(self.best_k_models), "best_model_path": self.best_model_path,
                "best_model_score": self.best_model_score, "kth_best_model_path": self.kth_best_model_path,
                "kth_value": self.kth_value, "current_score": self.current_score,
                "last_model_path": self.last_model_path,
                "latest": list(self._latest), "last_global_step_saved": self._last_global_step_saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath", self.dirpath)
        same_dir = saved_dir == self.dirpath
        self.best_model_path = state_dict["best_model_path"]
        self._last_global_step_saved = state_dict.get("last_global_step_saved", self._last_global_step_saved)
        if same_dir:  # bookkeeping of files in another directory is not ours to delete
            self.best_model_score = state_dict["best_model_score"]
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self._latest = list(state_dict.get("latest", []))
            self.last_model_path = state_dict.get("last_model_path", "")
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
        else:
            warnings.warn(f"ModelCheckpoint: the checkpoint's callback wrote to {saved_dir!r}, this one writes to "
                          f"{self.dirpath!r}; only best_model_path is restored (the best k, last_model_path and their "
                          "scores belong to the other directory, whose files this run neither ranks nor deletes).",
                          UserWarning, stacklevel=2)
