"""``EarlyStopping``: stop when a monitored metric stops improving (or crosses a threshold)."""

from __future__ import annotations

import enum
import math
from typing import Any

from trainer.strategies.exceptions import MisconfigurationException
from .base import Callback, MissingMetricError
from trainer.strategies.support import rank_zero_info
from .view import TrainerView


class EarlyStoppingReason(enum.Enum):
    """Why ``EarlyStopping`` stopped fit (``EarlyStopping.stopping_reason``); Lightning's values."""

    NOT_STOPPED = 0
    STOPPING_THRESHOLD = 1
    DIVERGENCE_THRESHOLD = 2
    PATIENCE_EXHAUSTED = 3
    NON_FINITE_METRIC = 4


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved by ``min_delta`` for ``patience`` checks.

    Args:
        monitor: a metric name logged with ``self.log`` (e.g. "val/loss").
        mode: "min" or "max".
        patience: checks without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_finite: stop when the metric is NaN or infinite.
        strict: a missing ``monitor`` is an error (listing the logged keys); else it is skipped.
        check_on_train_epoch_end: check after each training epoch instead of after validation
            (default: after validation when there is validation, else after the epoch).
        verbose: print a line on rank zero when it stops, with the reason.

    ``monitor="epoch"`` / ``"step"`` read the Trainer's counters unless a metric of that name is
    logged. After a stop, ``stopping_reason`` is an ``EarlyStoppingReason`` (``NOT_STOPPED``
    until then) and ``stopping_reason_message`` says what happened (None until then).
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0,
                 stopping_threshold: float | None = None, divergence_threshold: float | None = None,
                 check_finite: bool = True, strict: bool = True, verbose: bool = False,
                 check_on_train_epoch_end: bool | None = None) -> None:
        if mode not in ("min", "max"):
            raise MisconfigurationException(f"EarlyStopping(mode={mode!r}): expected 'min' or 'max'.")
        if not isinstance(patience, int) or patience < 0:
            raise MisconfigurationException(f"EarlyStopping(patience={patience!r}): expected an int >= 0.")
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta = abs(min_delta)
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.check_finite, self.strict, self.verbose = check_finite, strict, verbose
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: str | None = None

    @property
    def state_key(self) -> str:
        """Lightning's key for this callback's state in a checkpoint (class name and settings)."""
        return type(self).__qualname__ + repr({"monitor": self.monitor, "mode": self.mode})

    @property
    def _legacy_state_keys(self) -> list[str]:
        """The key checkpoints of trainer <= 0.1 stored this state under (still read on resume)."""
        return [f"EarlyStopping{{monitor={self.monitor!r}, mode={self.mode!r}}}"]

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def on_validation_end(self, trainer: TrainerView, module: Any) -> None:
        if trainer.sanity_checking or self.check_on_train_epoch_end:
            return
        self._check(trainer)

    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        if self.check_on_train_epoch_end or (self.check_on_train_epoch_end is None and not self._saw_validation):
            self._check(trainer)

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        self._saw_validation = False

    def on_validation_start(self, trainer: TrainerView, module: Any) -> None:
        if not trainer.sanity_checking:
            self._saw_validation = True

    _saw_validation = False

    def _check(self, trainer: TrainerView) -> None:
        metrics = dict(trainer.callback_metrics)
        metrics.setdefault("epoch", trainer.current_epoch)
        metrics.setdefault("step", trainer.global_step)
        if self.monitor not in metrics:
            if self.strict:
                raise MissingMetricError(f"EarlyStopping(monitor={self.monitor!r}): this metric was never logged. Logged "
                               f"metrics: {sorted(trainer.callback_metrics) or 'none'}. Log it with self.log({self.monitor!r}, value) "
                               "or pass strict=False to skip the check while it is missing.")
            return
        value = float(metrics[self.monitor])
        should_stop, why = self._evaluate(value)
        if should_stop:
            assert why is not None  # a stop comes with its reason
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason, self.stopping_reason_message = why
            reason = why[1]
            trainer.should_stop = True
            if self.verbose and trainer.is_global_zero:
                rank_zero_info(f"EarlyStopping: {reason}")

    def _evaluate(self, value: float) -> tuple[bool, tuple[EarlyStoppingReason, str] | None]:
        name, why = self.monitor, EarlyStoppingReason
        if self.check_finite and not math.isfinite(value):
            return True, (why.NON_FINITE_METRIC, f"{name} = {value} is not finite.")
        if self.stopping_threshold is not None and self._better(value, self.stopping_threshold):
            return True, (why.STOPPING_THRESHOLD,
                          f"Stopping threshold reached: {name} = {value:.6g} reached the stopping threshold "
                          f"{self.stopping_threshold}.")
        if self.divergence_threshold is not None and self._better(self.divergence_threshold, value):
            return True, (why.DIVERGENCE_THRESHOLD,
                          f"Divergence threshold reached: {name} = {value:.6g} is worse than the divergence threshold "
                          f"{self.divergence_threshold}.")
        delta = -self.min_delta if self.mode == "min" else self.min_delta
        if self._better(value, self.best_score + delta):
            self.best_score, self.wait_count = value, 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (why.PATIENCE_EXHAUSTED, f"{name} did not improve by more than {self.min_delta} in "
                                                  f"{self.wait_count} checks; best {self.best_score:.6g}.")
        return False, None

    def state_dict(self) -> dict[str, Any]:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch,
                "best_score": self.best_score, "patience": self.patience,
                "stopping_reason": self.stopping_reason.value, "stopping_reason_message": self.stopping_reason_message}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]
        # a checkpoint from before these fields: not stopped
        reason = state_dict.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value)
        self.stopping_reason = EarlyStoppingReason(getattr(reason, "value", reason))
        self.stopping_reason_message = state_dict.get("stopping_reason_message")
