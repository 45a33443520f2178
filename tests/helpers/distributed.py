"""Run a function in N real processes joined by a gloo process group on 127.0.0.1.

The processes come from a fork server (one per test process, started on first use) that has
imported torch and this library once; each test's processes are forked from it. Against a fresh
interpreter per rank (the spawn start method) this saves ~2.5 CPU-seconds of imports per rank and
call, and the semantics are spawn's: the server never runs test code, the function and its
arguments are pickled, the working directory and ``sys.path`` are the caller's, and so is the
environment (it is handed over explicitly: a fork server's children would otherwise inherit the
environment the server started with).
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any, Callable

import torch.multiprocessing as mp

# What the fork server imports once. Only modules whose import reads no per-test state: the
# library reads its environment variables when it is used, not when it is imported. torch._dynamo:
# every rank imported it anyway (torch's optimizers do when they take their parameters, and the process
# group does before it forms), for ~1.3 CPU-seconds a rank and call; no test sets its variables.
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "trainer", "trainer.callbacks", "trainer.strategies",
           "tests.helpers", "tests.helpers.distributed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable, rank: int, world_size: int, port: int, queue: Any, kwargs: dict,
            environ: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": "1"})
    import torch
    torch.set_num_threads(1)
    try:
        queue.put((rank, "ok", fn(**kwargs)))
    except BaseException:  # report every failure, including in the test's own asserts
        queue.put((rank, "error", traceback.format_exc()))


def context(fresh: bool = False) -> Any:
    """The multiprocessing context the distributed tests start their ranks with (see the module's doc);
    ``fresh``: new interpreters that have imported nothing (spawn), for a test of what an import does."""
    if fresh:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # read when the server starts, i.e. on the first call
    return ctx


def run_distributed(fn: Callable, world_size: int = 2, timeout: float = 120, fresh_interpreters: bool = False,
                    **kwargs: Any) -> list[Any]:
    """``fn(**kwargs)`` on every rank; returns the results in rank order (lists, numbers, not tensors:
    tensors sent through a queue die with their process). ``fresh_interpreters``: ranks that have not
    imported PRELOAD's modules (see ``context``)."""
    ctx = context(fresh_interpreters)
    queue = ctx.Queue()
    port = free_port()
    environ = dict(os.environ)
    procs = [ctx.Process(target=_worker, args=(fn, rank, world_size, port, queue, kwargs, environ))
             for rank in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world_size)]


def trainer_order(dataset: Any, seed: int = 0) -> Any:
    """For one process, the order the Trainer deals a training set over several processes
    (``DistributedSampler(shuffle=True, seed)``, as Lightning's ``use_distributed_sampler``): each step
    of a batch of ``world_size * b`` then takes the samples the processes' steps of ``b`` take together.
    In a Trainer run the loop calls its ``set_epoch``; a plain loop gets the next epoch on each pass."""
    import torch

    class _EachPassNextEpoch(torch.utils.data.DistributedSampler):
        def __iter__(self):  # the Trainer's set_epoch, or the pass count of a plain loop
            indices = super().__iter__()  # computed now, for self.epoch
            if not getattr(self, "_epoch_set", False):
                self.epoch += 1
            self._epoch_set = False
            return indices

        def set_epoch(self, epoch: int) -> None:
            super().set_epoch(epoch)
            self._epoch_set = True

    return _EachPassNextEpoch(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
