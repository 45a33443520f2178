"""Why fit stopped, in one line: for the end-of-fit summary and ``trainer.state.stop_reason``.

fit ends for one of four reasons: a limit (``max_epochs``, ``max_steps``, ``max_time``), a stop request
(``trainer.should_stop = True`` from a callback such as ``EarlyStopping`` or ``Timer``, or from the
module), or a signal (SIGTERM: ``preemption.py``; Ctrl-C). ``requester`` names who asked for a stop at
the moment they ask (the Trainer's ``should_stop`` setter calls it); ``describe`` words the reason once
the loop has left its epochs.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any


def requester(depth: int = 2) -> Any:
    """The callback or module whose method set ``trainer.should_stop`` (the nearest ``self`` up the
    caller's frames that is one), else None (a user's own code). Only runs when a stop is asked for."""
    from trainer.callbacks import Callback
    from trainer.module import TrainModule

    frame: types.FrameType | None = sys._getframe(depth)
    for _ in range(6):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, (Callback, TrainModule)):
            return owner
        frame = frame.f_back
    return None


def _planned(trainer: Any) -> str:
    try:
        planned = trainer.estimated_stepping_batches
    except Exception:  # an unsized loader: no plan to compare with
        return ""
    return f" of {int(planned)} planned" if isinstance(planned, (int, float)) and math.isfinite(planned) else ""


def describe(trainer: Any, stop_requested: bool, by: Any, time_is_up: bool) -> str:
    """One line: what ended fit, with the optimizer steps done (of those planned, when known)."""
    cfg, step = trainer.config, trainer.global_step
    steps = f"{step}{_planned(trainer)} optimizer steps"
    if stop_requested:
        if by is None:
            return f"trainer.should_stop was set at global_step {step} ({steps})"
        name = type(by).__name__
        said = getattr(by, "stopping_reason_message", None) or getattr(by, "stopping_reason", None)
        if isinstance(said, str) and said:
            return f"{name}: {said.rstrip('.')} ({steps})"
        if hasattr(by, "duration") and getattr(by, "duration", None) is not None:  # Timer
            return f"{name}: duration {by.duration} reached ({steps})"
        return f"{name} set trainer.should_stop at global_step {step} ({steps})"
    if cfg.max_steps != -1 and step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} reached ({step} optimizer steps, epoch {trainer.current_epoch})"
    if time_is_up:
        return f"max_time={cfg.max_time:g} s reached ({steps})"
    if trainer.current_epoch >= cfg.epochs_limit:
        limit = f"max_epochs={cfg.max_epochs}" if cfg.max_epochs is not None else \
            f"the default limit of {cfg.epochs_limit} epochs (no max_epochs, max_steps or max_time was given)"
        return f"{limit} reached ({steps})"
    return f"stopped at global_step {step} ({steps})"
