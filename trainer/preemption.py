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


class StopAgreement:
    """Lets every process act on a SIGTERM that reached any one of them, at the same optimizer step.

    SLURM and Kubernetes signal processes at slightly different moments (or only some of them); a
    rank that stopped alone would leave the others waiting in a collective. So at each optimizer
    step every rank starts an asynchronous MAX all-reduce of its flag on a CPU (gloo) group and
    reads the result of the previous step's one: all ranks see the same answer at the same step,
    one step after the first signal, and the step never waits on it (the reduction of a byte ran
    while the step computed). One process: the flag is read directly.
    """

    def __init__(self, world_size: int) -> None:
        import torch.distributed as dist

        self._dist = dist if world_size > 1 and dist.is_available() and dist.is_initialized() else None
        self._group = None
        if self._dist is not None and self._dist.get_backend() != "gloo":
            self._group = self._dist.new_group(backend="gloo")  # nccl cannot reduce a CPU tensor
        self._pending: Any = None

    def poll(self, local: bool) -> bool:
        """True on every rank at the same step once any rank has ``local`` set."""
        if self._dist is None:
            return local
        import torch

        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            self._pending = None
            if flag.item():
                return True  # nothing more in flight: the stop happens now, on every rank
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        self._pending = (self._dist.all_reduce(flag, op=self._dist.ReduceOp.MAX, group=self._group,
                                               async_op=True), flag)
        return False

    def drain(self) -> None:
        """Finish the reduction still in flight (every rank started the same number)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
