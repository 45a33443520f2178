"""Preemption: SIGTERM (what SLURM and Kubernetes send before a kill) ends fit cleanly.

The handler only sets a flag. The loop sees it when the current optimizer step is done,
writes ``last.ckpt`` in the checkpoint directory, and the process exits with status 0.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class Preempted(Exception):
    """Raised inside the loop after the preemption checkpoint is written."""


@contextlib.contextmanager
def sigterm_sets_flag(trainer: Any) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        trainer._preempted = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
