"""Starting worker processes through torch's own elastic launcher (what torchrun uses)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import uuid
from typing import Any, Callable, Iterator, NoReturn

from trainer.logs.console import rank_zero_info

from trainer.strategies.precision import precision_name


def launch_this_script(num_processes: int) -> NoReturn:
    """Re-run the current script as ``num_processes`` ranks on this machine, wait for them, and
    exit with status 0 (or raise the launcher's error naming the failed rank)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    script = sys.argv[0]
    if not script or not os.path.isfile(script):
        raise RuntimeError(
            f"Trainer(strategy='ddp', devices={num_processes}) must start {num_processes} processes, which re-run "
            "the script; this session has no script file (an interactive session or `python -c`?). Save the code "
            f"to a file and run it, or use `trainer launch --num-processes {num_processes} train.py`.")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    rank_zero_info(f"Starting {num_processes} processes through torch.distributed's elastic launcher.")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="trainer-launch-") as markers:
        os.environ[SAVED_MARKERS_ENV] = markers  # failure reports; a failed worker's peers end at once
        try:
            with frame_named_rendezvous_events(), failed_workers_end_the_job(markers), quiet_stop_notices():
                elastic_launch(config, sys.executable)("-u", *_how_this_ran(script), *sys.argv[1:])
        except Exception as err:
            summary = failure_summary(markers, err)
            if summary is not None and hasattr(err, "add_note"):  # Python 3.11+
                err.add_note(summary)
            raise
        finally:
            os.environ.pop(SAVED_MARKERS_ENV, None)
    raise SystemExit(0)


def _how_this_ran(script: str) -> list[str]:
    """How to start this program again: ``-m package`` when it ran as ``python -m package`` (run as a file,
    ``package/__main__.py`` would put the package's own folder first on sys.path, where a module such as
    trainer/accelerate/get_logger.py shadows the standard library's), else the script's path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return ["-m", spec.name.removesuffix(".__main__")]
    return [script]


class _DropStopNotices(logging.Filter):
    """torch's agent logs, on a signal, 'Received 2 death signal, shutting down workers' and one 'Sending
    process N closing signal SIGINT' per worker; the launcher says the same in one line after them."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("death signal, shutting down workers" in text or "closing signal SIG" in text)


@contextlib.contextmanager
def quiet_stop_notices() -> Iterator[None]:
    """Within: torch's per-worker notices of a Ctrl-C/SIGTERM stop are dropped (the launcher's line and
    each rank's 'Interrupted (Ctrl-C) ...' line say it); every other log line of the agent is kept."""
    names = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")
    drop = _DropStopNotices()
    for name in names:
        logging.getLogger(name).addFilter(drop)
    try:
        yield
    finally:
        for name in names:
            logging.getLogger(name).removeFilter(drop)


@contextlib.contextmanager
def frame_named_rendezvous_events() -> Iterator[None]:
    """Within: torch's dynamic rendezvous names its events from the calling frame, not ``inspect.stack()``.

    Before the agent starts the workers, the rendezvous records six events, each named by
    ``get_method_name()``, which calls ``inspect.stack()`` twice: that reads the source of every
    frame and scans ``sys.modules`` for each, ~0.04 CPU-s a call here, ~0.5 CPU-s of the launcher's
    start-up in all (torchrun's too), spent on a name the default (null) event handler drops. The
    replacement returns the same name from the frame itself in microseconds; torch's function is
    put back on exit, and nothing changes if a torch version no longer has it.
    """
    try:
        from torch.distributed.elastic.rendezvous import dynamic_rendezvous
    except ImportError:  # pragma: no cover -- every torch this library supports has it
        yield
        return
    original = getattr(dynamic_rendezvous, "get_method_name", None)
    if original is None:
        yield
        return
    dynamic_rendezvous.get_method_name = _method_name
    try:
        yield
    finally:
        dynamic_rendezvous.get_method_name = original


def _method_name(depth: int = 2) -> str:
    """What torch's ``get_method_name(depth)`` returns: the name of the function ``depth`` frames up
    (0 is this one), or ``"no_method_name"`` when the stack is not that deep."""
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:
        return "no_method_name"


# -- in the workers: the settings `trainer launch` sent -------------------------------------------
SETTINGS_ENV = "TRAINER_LAUNCH_SETTINGS"
_DEVICE = {"cpu": "cpu", "gpu": "cuda"}
# our argument -> (launch setting, how its value becomes ours)
_MAP: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "precision": ("mixed_precision", precision_name), "mixed_precision": ("mixed_precision", lambda v: v),
    "strategy": ("strategy", lambda v: v), "accelerator": ("device", _DEVICE.get),
    "accumulate_grad_batches": ("gradient_accumulation_steps", int),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", int),
}
_reported: set[tuple[str, str]] = set()


def launch_settings() -> dict:
    """What ``trainer launch`` resolved from its flags and the config file; {} outside it."""
    import json

    raw = os.environ.get(SETTINGS_ENV)
    return json.loads(raw) if raw else {}


def apply_launch_settings(owner: str, given: dict) -> dict:
    """Fill the arguments the code did not give (None) from the launch settings; an argument the
    code did give wins, and a difference is reported once, on rank zero."""
    settings = launch_settings()
    resolved = dict(given)
    for name, value in given.items():
        setting, convert = _MAP[name]
        if settings.get(setting) is None:
            continue
        launched = convert(settings[setting])
        if value is None:
            resolved[name] = launched
        elif value != launched and (owner, name) not in _reported and os.environ.get("RANK", "0") == "0":
            _reported.add((owner, name))
            rank_zero_info(f"{owner}({name}={value!r}) in the code overrides {setting}: {settings[setting]!r} from "
                           "`trainer launch` (its flags and config file).")
    return resolved


# -- SIGTERM of `trainer launch`: did every worker save? -------------------------------------------
SAVED_MARKERS_ENV = "TRAINER_SAVED_MARKERS"  # a directory `trainer launch` made for this run


def mark_saved(global_rank: int) -> None:
    """A worker saved its preemption checkpoint: tell `trainer launch` (which then exits 0)."""
    directory = os.environ.get(SAVED_MARKERS_ENV)
    if directory and os.path.isdir(directory):
        with open(os.path.join(directory, f"rank{global_rank}"), "w"):
            pass


# -- a worker failed: the others are stopped at once, and the summary names the one at fault -----
TEARDOWN_MARKER = "teardown-after-failure"  # in the SAVED_MARKERS_ENV directory while the launcher stops workers
FAILURE_GRACE_S = 5  # seconds a worker gets after SIGTERM before SIGKILL, when another failed (torchrun: 30)


def torn_down_after_failure() -> bool:
    """In a worker: the launcher is stopping this process because another one failed (not a
    preemption: nothing can be saved, the group is broken), so a SIGTERM ends it at once."""
    directory = os.environ.get(SAVED_MARKERS_ENV)
    return bool(directory and os.path.exists(os.path.join(directory, TEARDOWN_MARKER)))


@contextlib.contextmanager
def failed_workers_end_the_job(directory: str) -> Iterator[None]:
    """Within: when a worker fails (or hangs and its peer gives up and fails), torchrun stops the others
    with the marker ``TEARDOWN_MARKER`` in ``directory`` -- their SIGTERM handler then exits at once
    instead of waiting for a step boundary to save -- and a grace of ``FAILURE_GRACE_S`` before SIGKILL
    (its 30 s held the job that long for a hung rank). A SIGTERM to the launcher itself (preemption)
    and a restart for a membership change stop workers none of which failed: unchanged, they save
    ``last.ckpt``. The marker is gone before a restarted group starts."""
    try:
        from torch.distributed.elastic.multiprocessing.api import SubprocessContext
    except ImportError:  # pragma: no cover -- every torch this library supports has it
        yield
        return
    original = SubprocessContext.__dict__.get("_close")
    if original is None:
        yield
        return

    def close(context: Any, death_sig: Any, timeout: int = 30) -> None:
        handlers = getattr(context, "subprocess_handlers", None) or {}
        running = any(h.proc.poll() is None for h in handlers.values())
        if not getattr(context, "_failures", None) or not running:  # no failure: torchrun's own way
            return original(context, death_sig, timeout)
        marker = os.path.join(directory, TEARDOWN_MARKER)
        try:
            with open(marker, "w"):
                pass
        except OSError:
            pass
        try:
            original(context, death_sig, min(timeout, FAILURE_GRACE_S))
        finally:
            with contextlib.suppress(OSError):
                os.remove(marker)

    setattr(SubprocessContext, "_close", close)  # torch's method, replaced for this launch only
    try:
        yield
    finally:
        setattr(SubprocessContext, "_close", original)


def failure_summary(directory: str, error: BaseException | None = None) -> str | None:
    """Which rank hung or died, from the reports of the ranks that gave up waiting for it
    (``failure-rank<N>.json``, written by trainer.strategies.failures); None without reports. torchrun's
    own "Root Cause" is the first process to exit, which is the one that gave up, not the hung one."""
    import json

    reports = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.startswith("failure-rank") and name.endswith(".json"):
            try:
                with open(os.path.join(directory, name)) as f:
                    reports.append(json.load(f))
            except (OSError, ValueError):
                continue
    reports = [r for r in reports if isinstance(r, dict) and isinstance(r.get("missing"), list)]
    if not reports:
        return _first_failure_summary(error)
    missing = sorted({m for r in reports for m in r["missing"]})
    waiting = sorted({r["rank"] for r in reports} - set(missing))
    first = reports[0]
    gave_up = (f"rank{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} gave up waiting for it in "
               f"{first['collective']}")
    if not missing:
        return (f"the ranks called different collectives ({gave_up.replace(' for it', '')}): every rank was alive. "
                "Run with --debug to have each rank's calls named.")
    ranks = f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
    if all(r["how"] == "gone" for r in reports):
        text = f"{ranks} died (its process is gone: killed, or crashed; see its log above); {gave_up}."
    else:
        text = (f"{ranks} hung: {gave_up} after the {first['timeout']:g} s collective timeout (change it with "
                "--collective-timeout); see its log for where it was.")
    root = _first_failed_rank(error)
    if root is not None and root not in missing:
        text += f" (torchrun's \"Root Cause\" above, rank {root}, is the first process that exited.)"
    return text


def _first_failure_summary(error: BaseException | None) -> str | None:
    """No rank reported a peer: the first process that failed is the one at fault (it died, or raised)."""
    import signal

    rank = _first_failed_rank(error)
    if rank is None:
        return None
    code = error.failures[rank].exitcode  # type: ignore[union-attr]
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"died of {name} (killed, or crashed: see its log above)"
    else:
        how = f"failed first, with exit code {code} (its traceback is above)"
    return f"rank {rank} {how}; the other ranks were stopped."


def _first_failed_rank(error: BaseException | None) -> int | None:
    try:
        return int(error.get_first_failure()[0])  # type: ignore[union-attr]  # torchrun's ChildFailedError
    except Exception:  # noqa: BLE001 - another error, or a torch without it
        return None


# -- SLURM's warning signal under `trainer launch` --------------------------------------------------
@contextlib.contextmanager
def slurm_signals_reach_workers() -> Iterator[None]:
    """Within: in a SLURM batch job, SIGUSR1/SIGUSR2 sent to `trainer launch` (the task SLURM signals,
    e.g. ``#SBATCH --signal=USR1@90``) are passed on to its worker processes, whose Trainer saves and
    requeues (``SLURMEnvironment``). Without this the launcher died of the signal's default action and
    took its workers with it, unsaved."""
    import signal
    import threading

    from trainer.strategies.environment import SLURMEnvironment

    if not SLURMEnvironment.in_batch_job() or threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: object) -> None:
        for pid in _child_processes(os.getpid()):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _child_processes(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (torchrun's workers are the launcher's children); Linux."""
    children: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(parent):
            children.append(int(entry))
    return children
