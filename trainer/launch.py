"""Starting worker processes through torch's own elastic launcher (what torchrun uses)."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from typing import Iterator, NoReturn

from trainer._logging import rank_zero_info

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
    with frame_named_rendezvous_events():
        elastic_launch(config, sys.executable)("-u", script, *sys.argv[1:])
    raise SystemExit(0)


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
_MAP = {
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
