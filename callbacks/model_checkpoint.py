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
from trainer.strategies.checkpoint_io import atomic_link, atomic_save, non_finite_parameters, snapshot
from .base import Callback, MissingMetricError
from trainer.strategies._util import rank_zero_info

_FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


class ModelCheckpoint(Callback):
    """Save checkpoints during ``fit``.

    Args:
        dirpath: where to write; default ``<default_root_dir>/checkpoints``.
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
        save_on_train_epoch_end: save at the training epoch's end instead of after validation.
        async_save: write on a background thread: training stops only while the state is copied
            to CPU memory (the copy needs as much memory as the checkpoint), then goes on while the
            file is written, fsynced and renamed into place. Saves stay in order, ``last.ckpt``
            and evictions follow each write, and fit ends only once the last write is whole. With
            FSDP every rank copies its own shards and writes them behind (the same atomic directory,
            over a process group of their own); not with DeepSpeed, whose engine writes its shards.

    Its bookkeeping (the best k paths and scores) is checkpointed too, so after a resume it
    neither rescans the directory nor deletes files it did not write.
    """

    def __init__(self, dirpath: str | None = None, filename: str | None = None, monitor: str | None = None,
                 mode: str = "min", save_top_k: int = 1, save_last: bool | None = None,
                 every_n_train_steps: int | None = None, every_n_epochs: int | None = None,
                 train_time_interval: datetime.timedelta | float | None = None, save_weights_only: bool = False,
                 save_on_train_epoch_end: bool | None = None, verbose: bool = False,
                 auto_insert_metric_name: bool = True, async_save: bool = False) -> None:
        verbose: print a line on rank zero for each save (metric, value, path).
        auto_insert_metric_name: write ``name=`` before each field of ``filename`` that lacks it.
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint(mode={mode!r}): expected 'min' or 'max'.")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k!r}): expected k >= 0, or -1 to keep all.")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None): the best {save_top_k} "
                             "need a metric to rank them. Pass monitor='val/loss' (for example), or save_top_k=-1.")
        triggers = [n for n, v in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs),
                                   ("train_time_interval", train_time_interval)) if v]
        if len(triggers) > 1:
            raise ValueError(f"ModelCheckpoint({', '.join(f'{t}=...' for t in triggers)}): choose one schedule.")
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"ModelCheckpoint({name}={value!r}): expected an int >= 0.")
        if isinstance(train_time_interval, datetime.timedelta):
            train_time_interval = train_time_interval.total_seconds()
        self.dirpath, self.filename, self.monitor, self.mode = dirpath, filename, monitor, mode
        self.save_top_k, self.save_last, self.save_weights_only = save_top_k, save_last, save_weights_only
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None else (0 if triggers else 1)
        self.train_time_interval = train_time_interval
        self.save_on_train_epoch_end, self.verbose = save_on_train_epoch_end, verbose
        self.auto_insert_metric_name, self.async_save = auto_insert_metric_name, async_save
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: float | None = None
        self.last_model_path = ""
        self._latest: list[str] = []  # monitor=None: paths of the newest saves, oldest first
        self._last_global_step_saved = -1
        self._last_time_saved = time.monotonic()
        self._saw_validation = False
        self._locked = False

    @property
    def state_key(self) -> str:
        return (f"ModelCheckpoint{{monitor={self.monitor!r}, mode={self.mode!r}, every_n_train_steps="
                f"{self.every_n_train_steps}, every_n_epochs={self.every_n_epochs}, "
                f"train_time_interval={self.train_time_interval}}}")

    # -- when ---------------------------------------------------------------------------------
    def setup(self, trainer: Any, module: Any, stage: str) -> None:
        strategy = trainer.accelerator.strategy
        if self.async_save and strategy.sharded_format and not strategy.can_stage_sharded:
            raise ValueError(f"ModelCheckpoint(async_save=True) with {type(strategy).__name__}: its checkpoints are "
                             "sharded, each rank writing its own part through its engine, which cannot be copied aside "
                             "for a background write (FSDP's can). Use ModelCheckpoint(async_save=False) with this "
                             "strategy.")
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        self.dirpath = os.path.abspath(self.dirpath)
        if stage == "fit" and trainer.is_global_zero and not self._locked:
            lock_directory(self.dirpath)  # one writing run per directory (it cleans temporaries on resume)
            self._locked = True

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        if self._locked:
            unlock_directory(self.dirpath)
            self._locked = False

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._last_time_saved = time.monotonic()
        self._saw_validation = False

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
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

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if trainer.sanity_checking or not trainer.training:
            return
        self._saw_validation = True
        if not self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        # fit stopped inside an epoch (max_steps, max_time): keep that point too, to resume from it
        stopped_inside = trainer.state.batch_idx > 0 and not trainer.is_accumulating
        if stopped_inside and trainer.global_step != self._last_global_step_saved:
            self._save(trainer)

    def _on_train_epoch_end(self, trainer: Any) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        return not trainer.val_dataloaders

    def _epoch_due(self, trainer: Any) -> bool:
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # -- what -------------------------------------------------------------------------------
    def format_checkpoint_name(self, metrics: dict[str, float], epoch: int, step: int) -> str:
        values = {"epoch": epoch, "step": step, **metrics}
        template = self.filename or "epoch={epoch}-step={step}"

        def field(match: re.Match) -> str:
            name, spec = match.group(1), match.group(2) or ""
            if name not in values:
                raise MissingMetricError(
                    f"ModelCheckpoint(filename={template!r}) uses {{{name}}}, which was not logged. Logged metrics: "
                    f"{sorted(metrics) or 'none'}.")
            before = match.string[: match.start()]
            prefix = f"{name}=" if self.auto_insert_metric_name and not before.endswith(f"{name}=") else ""
            return prefix + format(values[name], spec)

        return _FIELD.sub(field, template).replace("/", "_") + ".ckpt"

    def _save(self, trainer: Any) -> None:
        if not self._parameters_finite(trainer):
            return
        metrics = dict(trainer.callback_metrics)
        self._last_global_step_saved = trainer.global_step
        self._last_time_saved = time.monotonic()
        if self.save_last:  # before the bookkeeping below, so that file and last.ckpt hold the same
            self.last_model_path = os.path.join(self.dirpath, "last.ckpt")
        written, evicted = None, []
        if self.save_top_k != 0:
            if self.monitor is None:
                written, evicted = self._rank_latest(metrics, trainer)
            elif self.monitor in metrics:
                written, evicted = self._rank_by_score(metrics, trainer)
            elif self._saw_validation or not trainer.val_dataloaders:
                raise MissingMetricError(
                    f"ModelCheckpoint(monitor={self.monitor!r}): this metric was never logged. Logged metrics: "
                    f"{sorted(metrics) or 'none'}. Log it with self.log({self.monitor!r}, value), or fix the name.")
        if written is None and not self.save_last:
            return
        if not self.async_save:
            self._write(trainer, written, evicted, None)
            return
        writer = trainer.background_writer
        writer.wait()  # the previous write first: one snapshot in memory, saves in order
        ckpt = trainer.dump_checkpoint(self.save_weights_only)  # every rank: it gathers the ranks' RNG states
        strategy = trainer.accelerator.strategy
        if strategy.sharded_format:  # every rank copies its shards now and writes them behind
            staged = strategy.stage_sharded(ckpt, trainer.module, trainer.optimizers)
            writer.submit(lambda: self._write(trainer, written, evicted, staged), written or self.last_model_path)
        elif trainer.is_global_zero:
            ckpt = snapshot(ckpt)  # training may change the state from here on
            writer.submit(lambda: self._write(trainer, written, evicted, ckpt), written or self.last_model_path)

    def _parameters_finite(self, trainer: Any) -> bool:
        """NaN or inf weights (e.g. from a NaN gradient with a finite loss) never replace a checkpoint:
        fit stops naming the step, or with ``stop_on_nonfinite_loss=False`` this save is skipped."""
        strategy = trainer.accelerator.strategy
        bad = non_finite_parameters(trainer.module, strategy.all_gather_object)
        if not bad:
            return True
        kept = self.last_model_path or self.best_model_path
        kept = f"the last one, {kept}, is from global_step {self._last_global_step_saved}" if kept else "none yet"
        message = (f"ModelCheckpoint: the parameters are not finite at global_step {trainer.global_step} (epoch "
                   f"{trainer.current_epoch}; NaN/inf in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}), so "
                   f"no checkpoint is written and none is replaced ({kept}).")
        if trainer.config.stop_on_nonfinite_loss:
            raise FloatingPointError(message + " A gradient was NaN or infinite though the loss was finite. Lower "
                                     "the learning rate or clip gradients (gradient_clip_val=1.0), then resume with "
                                     "fit(ckpt_path='last').")
        if trainer.is_global_zero:
            warnings.warn(message + " Training goes on (stop_on_nonfinite_loss=False).", stacklevel=2)
        return False

    def _write(self, trainer: Any, written: str | None, evicted: list[str], ckpt: Any) -> None:
        """The checkpoint, then the evictions it replaces, then last.ckpt. ``ckpt`` is a snapshot to
        write from the background thread on rank zero only (no collectives there), or a sharded
        strategy's staged write (every rank, over its own group); None: save now."""
        def save(path: str) -> None:
            if ckpt is None:
                trainer.save_checkpoint(path, weights_only=self.save_weights_only)
            elif callable(ckpt):
                ckpt(path)
            else:
                atomic_save(ckpt, path)

        if written is not None:
            save(written)
            self._remove(trainer, evicted)
        if self.save_last and not (written and self._link_last(trainer, written, collective=ckpt is None)):
            save(self.last_model_path)

    def _link_last(self, trainer: Any, written: str, collective: bool) -> bool:
        """last.ckpt as a hard link to the checkpoint just written (the same state at the same step):
        one write per save instead of two. False where links cannot be made (sharded directories,
        some filesystems): then last.ckpt is written in full."""
        strategy = trainer.accelerator.strategy
        if strategy.sharded_format:
            return False
        linked = atomic_link(written, self.last_model_path) if trainer.is_global_zero else False
        return bool(strategy.broadcast(linked)) if collective and strategy.world_size > 1 else linked

    def _rank_latest(self, metrics: dict[str, float], trainer: Any) -> tuple[str, list[str]]:
        path = self._path(trainer, metrics)
        evicted = []
        if path not in self._latest:
            self._latest.append(path)
        if self.save_top_k != -1:
            evicted, self._latest = self._latest[: -self.save_top_k], self._latest[-self.save_top_k:]
        self.best_model_path = path
        return path, [p for p in evicted if p != path]

    def _rank_by_score(self, metrics: dict[str, float], trainer: Any) -> tuple[str | None, list[str]]:
        score = float(metrics[self.monitor])
        if math.isnan(score):
            score = math.inf if self.mode == "min" else -math.inf
        worst = self._worst()
        full = self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k
        if full and not self._better(score, self.best_k_models[worst]):
            return None, []
        path = self._path(trainer, metrics)
        self.best_k_models[path] = score
        evicted = []
        if self.save_top_k != -1 and len(self.best_k_models) > self.save_top_k:
            evicted = [self._worst()]
            del self.best_k_models[evicted[0]]
        self.best_model_path = min(self.best_k_models, key=self._sort_key)
        self.best_model_score = self.best_k_models[self.best_model_path]
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

    def _path(self, trainer: Any, metrics: dict[str, float]) -> str:
        return os.path.join(self.dirpath, self.format_checkpoint_name(metrics, trainer.current_epoch,
                                                                      trainer.global_step))

    def _remove(self, trainer: Any, paths: list[str]) -> None:
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
                "best_model_score": self.best_model_score, "last_model_path": self.last_model_path,
                "latest": list(self._latest), "last_global_step_saved": self._last_global_step_saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        same_dir = state_dict.get("dirpath") == self.dirpath
        self.best_model_path = state_dict["best_model_path"]
        self.best_model_score = state_dict["best_model_score"]
        self._last_global_step_saved = state_dict["last_global_step_saved"]
        if same_dir:  # bookkeeping of files in another directory is not ours to delete
            self.best_k_models = dict(state_dict["best_k_models"])
            self._latest = list(state_dict["latest"])
            self.last_model_path = state_dict["last_model_path"]
