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
    rank that stopped alone would leave the others waiting in a collective. So every rank starts an
    asynchronous MAX all-reduce of its flag on a CPU (gloo) group at agreed steps, and reads its
    result at the next agreed step: all ranks see the same answer at the same step, and the step
    never waits on it (the reduction of a few bytes ran while the steps computed).

    The agreement is not made at every step: on gloo it queues behind DDP's gradient all-reduce
    and cost ~0.8 ms of a ~9 ms step (benchmarks/ddp_phases.py). Each reduction also carries every
    rank's proposal for the next interval -- as many steps as take ``every_s`` seconds at its
    pace -- and the smallest wins, so every rank knows the same next step. A signal is acted on
    within about two intervals (~1 s with the default 0.5 s), at least one step after it arrived,
    well inside the 30-120 s that schedulers give between SIGTERM and SIGKILL. One process: the
    flag is read directly, at every step.
    """

    every_s = 0.5  # seconds of training between two agreements (0: at every optimizer step)
    max_interval = 10_000

    def __init__(self, world_size: int) -> None:
        import torch.distributed as dist

        self._dist = dist if world_size > 1 and dist.is_available() and dist.is_initialized() else None
        self._group = None
        if self._dist is not None and self._dist.get_backend() != "gloo":
            self._group = self._dist.new_group(backend="gloo")  # nccl cannot reduce a CPU tensor
        self._pending: Any = None
        self._countdown = 1  # polls until the next agreement
        self._interval = 1   # the agreed number of polls between two agreements
        self._since: float | None = None
        self.reductions = 0

    def poll(self, local: bool) -> bool:
        """True on every rank at the same step once any rank has ``local`` set."""
        if self._dist is None:
            return local
        self._countdown -= 1
        if self._countdown > 0:
            return False
        import time

        import torch

        now = time.monotonic()
        if self._pending is not None:
            work, buf = self._pending
            work.wait()
            self._pending = None
            if buf[0].item():
                return True  # nothing more in flight: the stop happens now, on every rank
            self._interval = int(-buf[1].item())  # the smallest proposal: the same on every rank
        proposal = 1
        if self._since is not None and self.every_s > 0:
            per_poll = (now - self._since) / self._interval
            proposal = int(min(self.max_interval, max(1.0, self.every_s / max(per_poll, 1e-9))))
        self._since = now
        buf = torch.tensor([1 if local else 0, -proposal], dtype=torch.int64)  # MAX of -x is -(MIN of x)
        self._pending = (self._dist.all_reduce(buf, op=self._dist.ReduceOp.MAX, group=self._group,
                                               async_op=True), buf)
        self.reductions += 1
        self._countdown = self._interval
        return False

    def drain(self) -> None:
        """Finish the reduction still in flight (every rank started the same number)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None
