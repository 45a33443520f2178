"""Preemption: SIGTERM (what SLURM and Kubernetes send before a kill) ends fit cleanly.

The handler only sets a flag. The loop sees it when the current optimizer step is done,
writes ``last.ckpt`` in the checkpoint directory, and the process exits with status 0.
A SIGTERM from `trainer launch` stopping the job because another rank failed (or hung) is
not a preemption: nothing can be saved without that rank, and this one may be the hung one,
never reaching a step boundary; the process ends at once, by the signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class Preempted(Exception):
    """Raised inside the loop after the preemption checkpoint is written."""


@contextlib.contextmanager
def sigterm_sets_flag(loop: Any, requeue_signal: Any = None) -> Iterator[None]:
    """While fit runs, SIGTERM sets ``loop.preempted`` (the ``FitLoop``'s flag). ``requeue_signal`` (SLURM's
    warning, SIGUSR1 by default; see ``SLURMEnvironment``) sets it too, and ``loop.requeue_signalled``:
    the save is then followed by ``scontrol requeue``."""
    loop.requeue_signalled = False
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        from trainer.engine.script_launch import torn_down_after_failure

        if torn_down_after_failure():
            end_by_signal(signum)
        loop.preempted = True

    def requeue_handler(signum: int, frame: Any) -> None:
        loop.requeue_signalled = True
        loop.preempted = True

    previous = signal.signal(signal.SIGTERM, handler)
    previous_requeue = signal.signal(requeue_signal, requeue_handler) if requeue_signal is not None else None
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if requeue_signal is not None:
            signal.signal(requeue_signal, previous_requeue)


def end_by_signal(signum: int) -> None:
    """Die of ``signum`` now (its default action), with one line on stderr saying why."""
    import os

    rank = os.environ.get("RANK", "0")
    try:  # os.write: print() may be in the middle of a write to the same stream
        os.write(2, f"[rank{rank}]: stopped by trainer launch after another rank failed; not saving (the "
                    "group is broken). The failed rank is named in the launcher's summary.\n".encode())
    except OSError:
        pass
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


class StopAgreement:
    """Lets every process act on a SIGTERM that reached any one of them, at the same optimizer step.

    SLURM and Kubernetes signal processes at slightly different moments (or only some of them); a
    rank that stopped alone would leave the others waiting in a collective. So every rank starts an
    asynchronous MAX all-reduce of its flag on a CPU (gloo) group at agreed optimizer steps, and
    reads its result at the next agreed step: all ranks see the same answer at the same step, and
    the step never waits on it (the reduction of a few bytes ran while the steps computed).

    The agreement is not made at every step: on gloo it queues behind DDP's gradient all-reduce
    and cost ~0.8 ms of a ~9 ms step (benchmarks/ddp_phases.py). Its interval is a number of
    optimizer steps, fixed for the fit and the same on every rank: ``every_n_steps`` if set, else
    as many steps as take ``every_s`` seconds at the slowest rank's pace. The first three steps
    agree at every step; the second one's reduction carries every rank's proposal (from the time
    its first step took) and the smallest wins. Reductions then start at steps 3, 3 + n, 3 + 2n,
    ..., each read when the next starts: which step the stop lands on depends only on the step
    the signal reached a rank at, never on timing. A signal is acted on within two intervals
    (~1 s with the default 0.5 s), well inside the 30-120 s that schedulers give between SIGTERM
    and SIGKILL.

    ``settle`` is a blocking agreement for the one point where a pending stop would otherwise be
    lost: the last step of an epoch (before the epoch-end hooks and checkpoints, and before fit can
    end; ``_sync_should_stop`` makes a collective there anyway). One process: the flag is read
    directly, at every step.
    """

    every_s = 0.5  # seconds of training between two agreements, when every_n_steps is None
    every_n_steps: int | None = None  # a fixed interval in optimizer steps (1: at every step)
    max_interval = 10_000

    def __init__(self, world_size: int) -> None:
        import torch.distributed as dist

        self._dist = dist if world_size > 1 and dist.is_available() and dist.is_initialized() else None
        self._group = None
        if self._dist is not None and self._dist.get_backend() != "gloo":
            self._group = self._dist.new_group(backend="gloo")  # nccl cannot reduce a CPU tensor
        self._pending: Any = None
        self._polls = 0
        self._interval = 0  # agreed steps between two agreements; 0 until the proposals are read
        self._countdown = 0
        self._first_poll_at = 0.0
        self.reductions = 0

    def poll(self, local: bool) -> bool:
        """True on every rank at the same step once any rank has ``local`` set."""
        if self._dist is None:
            return local
        if self._polls < 3:  # the first polls: time a step, agree on the interval
            return self._agree_interval(local)
        self._countdown -= 1
        if self._countdown > 0:
            return False
        self._countdown = self._interval
        return self._read_pending() or self._start(local, 0)

    def settle(self, local: bool) -> bool:
        """A blocking agreement (every rank's flag, now): True on every rank if any has ``local``."""
        if self._dist is None:
            return local
        if self._read_pending():
            return True
        self._start(local, 0)
        return self._read_pending()

    def drain(self) -> None:
        """Finish the reduction still in flight (every rank started the same number)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    def _agree_interval(self, local: bool) -> bool:
        """The first polls agree at every step: the second one sends each rank's proposal for the
        interval (from the time its first step took), and reading that reduction fixes the interval."""
        import time

        self._polls += 1
        if self._read_pending():
            return True
        if self._polls == 1:
            self._first_poll_at = time.monotonic()
            return self._start(local, 0)
        if self._interval:  # the proposals were read (by this poll, or a settle before it)
            return self._start(local, 0)
        proposal = self.every_n_steps
        if proposal is None:
            step_s = max(time.monotonic() - self._first_poll_at, 1e-9) / (self._polls - 1)
            proposal = int(min(self.max_interval, max(1.0, self.every_s / step_s)))
        return self._start(local, max(1, int(proposal)))

    def _start(self, local: bool, proposal: int) -> bool:
        import torch

        buf = torch.tensor([1 if local else 0, -proposal], dtype=torch.int64)  # MAX of -x is -(MIN of x)
        assert self._dist is not None  # only polled across processes
        self._pending = (self._dist.all_reduce(buf, op=self._dist.ReduceOp.MAX, group=self._group,
                                               async_op=True), buf)
        self.reductions += 1
        return False

    def _read_pending(self) -> bool:
        """Wait for the reduction in flight; True if a rank had its flag set. A reduction that carried
        interval proposals fixes the interval (the smallest proposal: the same on every rank)."""
        if self._pending is None:
            return False
        work, buf = self._pending
        work.wait()
        self._pending = None
        if buf[1].item() < 0:
            self._interval = self._countdown = int(-buf[1].item())
        return bool(buf[0].item())
