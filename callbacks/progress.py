"""A tqdm progress bar (rank zero only) and the end-of-fit summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from .base import Callback
from trainer.strategies.support import rank_zero_info
from .view import TrainerView


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class ProgressBar(Callback):
    """Shows the epoch's progress and the metrics logged with ``prog_bar=True``.

    When the output is not a terminal (CI, a log file) there is no bar; one line per epoch
    is printed instead. A short summary (steps, time, throughput, final metrics) ends fit.

    Args:
        refresh_rate: update the bar every this many batches.
        force: show the bar even when stderr is not a terminal.
    """

    def __init__(self, refresh_rate: int = 1, force: bool = False) -> None:
        self.refresh_rate = refresh_rate
        self.force = force
        self._bar: Any = None
        self._val_bar: Any = None
        self._shown_metrics: dict[str, float] = {}
        self._fit_start = 0.0
        self._samples_at_start = self._steps_at_start = self._batches_at_start = 0
        self._val_seconds, self._val_batches = 0.0, 0
        self._val_start: float | None = None  # set while fit's validation runs
        self._val_step: int | None = None  # global_step of fit's latest validation
        self._trainer: TrainerView | None = None

    @property
    def trainer(self) -> TrainerView:
        """The Trainer this bar is attached to (Lightning's ``ProgressBar.trainer``), from ``setup`` on."""
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__}.trainer: the bar is not attached to a Trainer yet; it is from "
                               "the stage's setup on.")
        return self._trainer

    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        self._trainer = trainer

    def get_metrics(self, trainer: TrainerView, module: Any) -> dict[str, float]:
        """What the bar shows: the values logged with ``prog_bar=True``. Override it to change that
        (Lightning's hook of the same name)."""
        return dict(trainer.progress_bar_metrics)

    def _enabled(self, trainer: TrainerView) -> bool:
        return trainer.is_global_zero and (self.force or sys.stderr.isatty())

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        self._fit_start = time.monotonic()
        self._samples_at_start = trainer.state.samples_seen
        self._steps_at_start = trainer.global_step
        self._batches_at_start = trainer.state.batches_seen
        self._val_seconds, self._val_batches, self._val_start = 0.0, 0, None
        self._val_step = None

    def on_train_epoch_start(self, trainer: TrainerView, module: Any) -> None:
        if self._enabled(trainer):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.num_training_batches, desc=f"Epoch {trainer.current_epoch}",
                             dynamic_ncols=True, leave=True, file=sys.stderr)

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self._bar
        if bar is None:
            return
        if (batch_idx + 1) % self.refresh_rate == 0:
            bar.update(batch_idx + 1 - bar.n)
            metrics = self.get_metrics(trainer, module)
            if metrics != self._shown_metrics:
                self._shown_metrics = dict(metrics)
                bar.set_postfix_str(_fmt(metrics), refresh=False)

    def on_validation_start(self, trainer: TrainerView, module: Any) -> None:
        if trainer.state.stage == "fit":  # not the sanity check, not trainer.validate()
            self._val_start = time.monotonic()
        if self._bar is not None and not trainer.sanity_checking:  # show the batch just finished first
            self._bar.update(trainer.state.batch_idx - self._bar.n)
            self._bar.refresh()
        if self._enabled(trainer) and not trainer.sanity_checking:
            from tqdm.auto import tqdm

            sizes = trainer.num_val_batches if trainer.state.stage == "fit" else []
            known = [n for n in sizes if n is not None]
            total = sum(known) if sizes and len(known) == len(sizes) else None
            self._val_bar = tqdm(desc="Validation", total=total, leave=False, dynamic_ncols=True, file=sys.stderr)

    def on_validation_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._val_start is not None:
            self._val_batches += 1
        if self._val_bar is not None:
            self._val_bar.update(1)

    def on_validation_end(self, trainer: TrainerView, module: Any) -> None:
        if self._val_start is not None:
            self._val_seconds += time.monotonic() - self._val_start
            self._val_start = None
            self._val_step = trainer.global_step
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if self._bar is not None:
            self._bar.set_postfix_str(_fmt(self.get_metrics(trainer, module)), refresh=True)

    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        metrics = self.get_metrics(trainer, module)
        if self._bar is not None:
            self._bar.set_postfix_str(_fmt(metrics), refresh=False)
            self._bar.close()
            self._bar = None
        elif trainer.is_global_zero:
            rank_zero_info(f"epoch {trainer.current_epoch}: global_step {trainer.global_step}"
                           + (f", {_fmt(metrics)}" if metrics else ""))

    def on_train_end(self, trainer: TrainerView, module: Any) -> None:
        # fit may stop inside an epoch (max_steps, max_time): no on_train_epoch_end then
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: TrainerView, module: Any, exception: BaseException) -> None:
        for bar in (self._bar, self._val_bar):
            if bar is not None:
                bar.close()
        self._bar = self._val_bar = None

    def on_fit_end(self, trainer: TrainerView, module: Any) -> None:
        if trainer.is_global_zero:
            rank_zero_info(self.summary(trainer))

    def summary(self, trainer: TrainerView) -> str:
        """The end-of-fit table: each stage's batches, time and throughput, the best checkpoint and
        the final metrics (rates are for the whole job: this process's times the process count)."""
        seconds = max(time.monotonic() - self._fit_start, 1e-9)
        val_seconds = self._val_seconds
        train_seconds = max(seconds - val_seconds, 1e-9)
        steps = trainer.global_step - self._steps_at_start
        samples = (trainer.state.samples_seen - self._samples_at_start) * trainer.world_size
        batches = trainer.state.batches_seen - self._batches_at_start
        rows = [("stage", "batches", "time", "throughput"),
                ("train", str(batches), f"{train_seconds:.1f} s",
                 f"{steps / train_seconds:.1f} steps/s, {samples / train_seconds:.1f} samples/s")]
        if self._val_batches:
            rows.append(("validate", str(self._val_batches), f"{val_seconds:.1f} s",
                         f"{self._val_batches / max(val_seconds, 1e-9):.1f} batches/s"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"Fit finished: {steps} optimizer steps, {trainer.current_epoch} epochs, {seconds:.1f} s "
                 f"({trainer.world_size} process{'es' if trainer.world_size > 1 else ''})"]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "best_model_path", None):
            score = checkpoint.best_model_score
            monitor = f" ({checkpoint.monitor}={score:.4g})" if checkpoint.monitor and score is not None else ""
            lines.append(f"  best checkpoint: {checkpoint.best_model_path}{monitor}")
        if trainer.callback_metrics:
            lines.append("  final metrics: " + _fmt(dict(sorted(trainer.callback_metrics.items()))))
            if self._val_step is not None and self._val_step < trainer.global_step:
                behind = trainer.global_step - self._val_step
                lines.append(f"  (validation metrics are from global_step {self._val_step}, {behind} optimizer "
                             f"step{'s' if behind > 1 else ''} before the end)")
        if getattr(trainer.state, "stop_reason", None):
            lines.append(f"  stopped: {trainer.state.stop_reason}")
        return "\n".join(lines)
