"""A collective that failed because another rank died or hung, explained.

gloo and NCCL report a dead peer as "Connection closed by peer [addr]:port" and a hung one as
"Timed out waiting 600000ms for recv operation"; neither says which rank is missing, which
collective it was, or what to change. ``explain_collective_failure`` asks the rendezvous store
which ranks are still there (each surviving rank checks in; a dead or hung rank cannot) and
returns a ``CollectiveFailure`` that says all of it.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import traceback
from typing import Any

_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting", "timed out",
            "Broken pipe", "Watchdog caught collective operation timeout", "NCCL error", "gloo/transport",
            "ProcessGroupGloo", "ProcessGroupNCCL")
_OURS = {"reduce": "all_reduce (a metric or reduce())", "all_gather": "all_gather",
         "barrier": "barrier", "broadcast": "broadcast", "all_gather_object": "all_gather_object",
         "all_reduce_gradients": "the gradient all_reduce (oom_split)", "_ddp": "DDP's parameter check at setup",
         "setup": "init_process_group"}
_CHECK_IN_PREFIX = "trainer/alive_after_failure"
# the directory `trainer launch` shares with its workers (trainer/engine/script_launch.py): a rank whose collective
# failed leaves a report there, and the launcher's summary names the rank that hung or died
REPORTS_ENV = "TRAINER_SAVED_MARKERS"


class CollectiveFailure(RuntimeError):
    """A collective ended because one or more ranks did not reach it (dead or hung)."""


def is_collective_failure(err: BaseException) -> bool:
    if isinstance(err, CollectiveFailure) or not isinstance(err, RuntimeError):
        return False
    text = str(err)
    return any(m in text for m in _MARKERS)


def collective_name(err: BaseException) -> str:
    """Which collective: our strategy method or torch's c10d function in the traceback, else DDP's
    gradient all-reduce when the error came out of a backward."""
    ours = c10d = None
    in_backward = False
    for frame in traceback.extract_tb(err.__traceback__):
        name, path = frame.name, frame.filename.replace(os.sep, "/")
        if path.endswith("strategies/ddp.py") and name in _OURS:
            ours = _OURS[name]
        elif path.endswith("distributed_c10d.py") and not name.startswith("_"):
            c10d = c10d or name
        elif name in ("backward", "_engine_run_backward", "run_backward"):
            in_backward = True
    if c10d and ours:
        return f"{ours} ({c10d})" if c10d not in ours else ours
    return ours or c10d or ("DDP's gradient all_reduce in backward" if in_backward else "a collective")


def missing_ranks(rank: int, world_size: int, grace: float) -> list[int] | None:
    """Check in on the rendezvous store and wait up to ``grace`` seconds for the other survivors;
    the ranks that never check in are missing. None when the store cannot be reached."""
    try:
        import torch.distributed as dist

        store = dist.distributed_c10d._get_default_store()
        store.set(f"{_CHECK_IN_PREFIX}/{rank}", "1")
        keys = [f"{_CHECK_IN_PREFIX}/{r}" for r in range(world_size)]
        deadline = time.monotonic() + grace
        while True:
            present = [store.check([k]) for k in keys]
            if all(present) or time.monotonic() >= deadline:
                return [r for r, ok in enumerate(present) if not ok]
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - the store died with its host (rank 0, without torchrun)
        return None


def explain_collective_failure(err: BaseException, rank: int, world_size: int,
                               timeout: datetime.timedelta, grace: float = 3.0) -> CollectiveFailure:
    seconds = timeout.total_seconds()
    missing = missing_ranks(rank, world_size, min(grace, seconds))
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    how = ("its process is gone (killed, or crashed: see its log)" if "closed by peer" in text
           or "reset by peer" in text else f"it did not answer within the timeout ({seconds:g} s): dead or hung")
    if missing is None:
        who = ("the rendezvous store is unreachable too, so rank 0 (which hosts it without torchrun) is "
               "probably the one that is missing")
    elif missing:
        who = f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} did not reach it"
    else:
        who = "every rank checked in afterwards: the ranks called different collectives (see trainer launch --debug)"
    report_failure(rank, missing, "gone" if "closed by peer" in text or "reset by peer" in text else "hung",
                   collective_name(err), seconds)
    return CollectiveFailure(
        f"Rank {rank} of {world_size} gave up waiting in {collective_name(err)}: {who}; {how}. The timeout in "
        f"force is {seconds:g} s; change it with DDPStrategy(timeout=seconds) in code, or collective_timeout in "
        f"`trainer config` / `trainer launch --collective-timeout SECONDS`. (Backend said: {text})")


def report_failure(rank: int, missing: list[int] | None, how: str, collective: str, seconds: float) -> None:
    """Tell `trainer launch` (when it started this process) which ranks this one gave up waiting for:
    ``failure-rank<N>.json`` in its directory. Best effort: the error itself is raised either way."""
    directory = os.environ.get(REPORTS_ENV)
    if not directory or not os.path.isdir(directory):
        return
    report = {"rank": rank, "missing": missing, "how": how, "collective": collective, "timeout": seconds}
    path = os.path.join(directory, f"failure-rank{rank}.json")
    from trainer.strategies.checkpoint_io import atomic_write  # the one writer of whole files

    def fill(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(report, f)

    try:
        atomic_write(path, fill)
    except OSError:
        pass
