"""Ctrl-C inside fit/validate/test/predict: one line per process instead of a traceback per process.

A Ctrl-C in a terminal reaches every process of the job (``trainer launch`` and its workers share the
terminal's process group), so each rank used to print a 45-line traceback of wherever its
``KeyboardInterrupt`` landed. Now each rank prints one line saying where it stopped, rank zero adds
what SIGTERM's handler says (the newest checkpoint and how to continue), and the ``KeyboardInterrupt``
is still raised -- a script may catch it, and the exit status stays the interrupted one -- but if
nothing catches it, the interpreter prints no traceback for it (``sys.excepthook`` skips the exception
this module reported; any other exception is printed as before).
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

from trainer.strategies.checkpoint_io import TEMP_PREFIX


def newest_checkpoint(trainer: Any) -> str | None:
    """``last.ckpt`` if the run has one, else its newest checkpoint file or directory, else None."""
    directory = trainer.checkpoint_dir
    last = os.path.join(directory, "last.ckpt")
    if os.path.exists(last):
        return last
    found = [p for p in glob.glob(os.path.join(directory, "*.ckpt")) if not os.path.basename(p).startswith(TEMP_PREFIX)]
    return max(found, key=os.path.getmtime) if found else None


def report(trainer: Any, stage: str, err: KeyboardInterrupt) -> None:
    """Print this rank's line (and on rank zero the way to continue); mark ``err`` as reported."""
    where = f"global_step {trainer.global_step}, epoch {trainer.current_epoch}"
    line = f"Interrupted (Ctrl-C) during {stage} at {where}."
    if trainer.world_size > 1:
        line = f"rank {trainer.global_rank}: {line}"
    if trainer.is_global_zero and stage == "fit":
        newest = newest_checkpoint(trainer)
        line += (f" The newest checkpoint is {newest}: run the same command with trainer.fit(..., ckpt_path='last') "
                 "to continue from it." if newest else " No checkpoint was written yet: running again starts over.")
    print(line, file=sys.stderr, flush=True)
    err._trainer_reported = True  # type: ignore[attr-defined]
    _install_quiet_hook()


def _install_quiet_hook() -> None:
    if getattr(sys.excepthook, "_trainer_quiet", False):
        return
    previous = sys.excepthook

    def hook(kind: type, value: BaseException, tb: Any) -> None:
        if getattr(value, "_trainer_reported", False):
            return  # its one line was printed where it happened
        previous(kind, value, tb)

    hook._trainer_quiet = True  # type: ignore[attr-defined]
    sys.excepthook = hook
