"""``SpikeDetection``: a training loss far above its running mean skips that optimizer step; several in a row
stop training with the step named (Lightning Fabric's idea, for the Trainer)."""

from __future__ import annotations

import collections
import math
from typing import Any

import torch

from trainer.strategies.support import rank_zero_warn

from .base import Callback
from .view import TrainerView


class TrainingSpikeError(RuntimeError):
    """``SpikeDetection`` saw ``max_consecutive`` loss spikes in a row."""


class SpikeDetection(Callback):
    """Watch each optimizer step's loss (the window's, as the loop weighted it; the mean over processes) against
    the running mean of the last ``window`` accepted ones. A spike -- not better than the last accepted loss,
    and at least ``rtol`` x the running mean above it (and ``atol`` above it, if given), or not finite -- skips
    the step: the gradients are dropped, so the weights and the optimizer's state stay as they were, and no
    checkpoint ever holds a spike's update. ``max_consecutive`` spikes in a row raise ``TrainingSpikeError``
    naming the steps.

    Checking costs one host sync per optimizer step (and one all-reduce on several processes).

    Args:
        mode: "min" (a spike goes up) or "max" (a tracked value that should grow; a spike goes down).
        window: how many accepted losses the running mean spans.
        warmup: accepted steps before any check.
        atol, rtol: absolute and relative distance from the running mean that makes a spike (None: not checked).
        max_consecutive: spikes in a row that stop training.
    """

    def __init__(self, mode: str = "min", window: int = 10, warmup: int = 1, atol: float | None = None,
                 rtol: float | None = 2.0, max_consecutive: int = 3) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"SpikeDetection(mode={mode!r}): expected 'min' or 'max'.")
        for name, value in (("window", window), ("max_consecutive", max_consecutive)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SpikeDetection({name}={value!r}): expected an int >= 1.")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"SpikeDetection(warmup={warmup!r}): expected an int >= 0.")
        if atol is None and rtol is None:
            raise ValueError("SpikeDetection(atol=None, rtol=None): nothing would count as a spike. Pass rtol (e.g. "
                             "2.0: three times the running mean) and/or atol.")
        self.mode, self.window, self.warmup, self.atol, self.rtol = mode, window, warmup, atol, rtol
        self.max_consecutive = max_consecutive
        self._values: collections.deque[float] = collections.deque(maxlen=window)
        self._last: float | None = None
        self._accepted = 0
        self._consecutive = 0
        self.skipped_steps: list[int] = []  # the optimizer steps (0-based) whose update was skipped
        self._window_loss: Any = 0.0

    def on_before_backward(self, trainer: TrainerView, module: Any, loss: torch.Tensor) -> None:
        # the loop weighted each micro-batch's loss for its window: their sum is the window's loss
        self._window_loss = self._window_loss + loss.detach().float()

    def on_before_optimizer_step(self, trainer: TrainerView, module: Any, optimizer: torch.optim.Optimizer) -> None:
        value, self._window_loss = self._window_loss, 0.0
        if not isinstance(value, torch.Tensor):
            return  # no loss went through backward in this window
        if trainer.world_size > 1:  # one decision for every process
            value = trainer.strategy.reduce(value, "mean")
        loss = float(value)
        if not self._is_spike(loss):
            self._consecutive = 0
            self._values.append(loss)
            self._last = loss
            self._accepted += 1
            return
        step = trainer.global_step
        self._consecutive += 1
        self.skipped_steps.append(step)
        for group in optimizer.param_groups:  # no gradient: the optimizer leaves these parameters and its state alone
            for p in group["params"]:
                p.grad = None
        where = f"optimizer step {step} (epoch {trainer.current_epoch}, batch_idx {trainer.state.batch_idx - 1})"
        mean = sum(self._values) / len(self._values)
        if self._consecutive >= self.max_consecutive:
            steps = self.skipped_steps[-self._consecutive:]
            raise TrainingSpikeError(f"SpikeDetection: {self._consecutive} loss spikes in a row, the last at {where}: "
                                     f"loss {loss:.6g} against a running mean of {mean:.6g} (rtol={self.rtol}, "
                                     f"atol={self.atol}); the updates of steps {steps} were skipped, so the weights are "
                                     "those before the first of them. Lower the learning rate, check the data of "
                                     "those batches, or raise max_consecutive/rtol.")
        rank_zero_warn(f"SpikeDetection: loss {loss:.6g} at {where} against a running mean of {mean:.6g}: the step's "
                       f"update is skipped ({self._consecutive} in a row, at most {self.max_consecutive}).")

    def _is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if self._accepted < max(self.warmup, 1):
            return False
        sign = 1.0 if self.mode == "min" else -1.0
        assert self._last is not None  # set with the first accepted loss
        if sign * (loss - self._last) <= 0:
            return False  # better than the last accepted loss
        mean = sum(self._values) / len(self._values)
        above = sign * (loss - mean)
        return (self.atol is None or above >= abs(self.atol)) and (self.rtol is None or above >= abs(self.rtol * mean))

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self._values), "last": self._last, "accepted": self._accepted,
                "consecutive": self._consecutive, "skipped_steps": list(self.skipped_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._values = collections.deque(state_dict["values"], maxlen=self.window)
        self._last, self._accepted = state_dict["last"], state_dict["accepted"]
        self._consecutive, self.skipped_steps = state_dict["consecutive"], list(state_dict["skipped_steps"])
