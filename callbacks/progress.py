"""A tqdm progress bar (rank zero only) and the end-of-fit summary."""

from __future__ import annotations

import sys
import time
from typing import Any

from callbacks.base import Callback


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
        self._samples_at_start = 0

    def _enabled(self, trainer: Any) -> bool:
        return trainer.is_global_zero and (self.force or sys.stderr.isatty())

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        self._fit_start = time.monotonic()
        self._samples_at_start = trainer.state.samples_seen
        self._steps_at_start = trainer.global_step

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if self._enabled(trainer):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=trainer.num_training_batches, desc=f"Epoch {trainer.current_epoch}",
                             dynamic_ncols=True, leave=True, file=sys.stderr)

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self._bar
        if bar is None:
            return
        if (batch_idx + 1) % self.refresh_rate == 0:
            bar.update(batch_idx + 1 - bar.n)
            metrics = trainer.progress_bar_metrics
            if metrics != self._shown_metrics:
                self._shown_metrics = dict(metrics)
                bar.set_postfix_str(_fmt(metrics), refresh=False)

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        if self._enabled(trainer) and not trainer.sanity_checking:
            from tqdm.auto import tqdm

            self._val_bar = tqdm(desc="Validation", leave=False, dynamic_ncols=True, file=sys.stderr)

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self._val_bar is not None:
            self._val_bar.update(1)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if self._val_bar is not None:
            self._val_bar.close()
            self._val_bar = None
        if self._bar is not None:
            self._bar.set_postfix_str(_fmt(trainer.progress_bar_metrics), refresh=True)

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(_fmt(trainer.progress_bar_metrics), refresh=False)
            self._bar.close()
            self._bar = None
        elif trainer.is_global_zero:
            print(f"epoch {trainer.current_epoch}: global_step {trainer.global_step}"
                  + (f", {_fmt(trainer.progress_bar_metrics)}" if trainer.progress_bar_metrics else ""), flush=True)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        # fit may stop inside an epoch (max_steps, max_time): no on_train_epoch_end then
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        for bar in (self._bar, self._val_bar):
            if bar is not None:
                bar.close()
        self._bar = self._val_bar = None

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        if not trainer.is_global_zero:
            return
        seconds = max(time.monotonic() - self._fit_start, 1e-9)
        steps = trainer.global_step - self._steps_at_start
        samples = trainer.state.samples_seen - self._samples_at_start
        print(f"Trained {steps} steps ({trainer.current_epoch} epochs) in {seconds:.1f} s: "
              f"{steps / seconds:.1f} steps/s, {samples / seconds:.1f} samples/s (this process).")
        if trainer.callback_metrics:
            print("Final metrics: " + _fmt(dict(sorted(trainer.callback_metrics.items()))))
