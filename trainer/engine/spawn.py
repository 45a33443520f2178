"""Lightning's ``ddp_spawn`` / ``ddp_fork`` / ``ddp_notebook``: ranks started from inside the calling interpreter.

``Trainer(strategy="ddp_fork", devices=2).fit(model, ...)`` in a plain interpreter (a notebook, pytest, ``python
-c``) starts one worker process per device with ``torch.multiprocessing`` (fork; see ``choose_start_method``), each set up as a launched
rank (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` on 127.0.0.1) so that the rest of the
library sees what torchrun would give it, and runs the same ``fit``/``validate``/``test``/``predict`` call there on a
real gloo group. Rank zero then writes what the caller reads afterwards to a file (``torch.save`` into a private
temporary directory: tensors sent through a multiprocessing queue fail once the worker has exited), and the caller's
objects get it back: the module's weights, the Trainer's counters and metric dicts, the callbacks' plain attributes
(``best_model_path``, ``best_model_score``, ``wait_count``, ...) and the stage's return value. An error in a worker
is raised again in the caller, the same exception type, with a note naming the rank.

``strategy="ddp"`` instead re-runs the script once per rank (trainer/engine/script_launch.py): right for scripts, wrong inside an
interpreter whose "script" is pytest or a notebook kernel.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
import sys
import tempfile
import traceback
from typing import Any

import torch

from trainer.logs.console import rank_zero_info

START_METHODS = ("fork", "spawn")
_RESULT = "result.pt"
_PRIMARY = "first-failure"  # written by the first worker that fails: its peers' errors are consequences
_GRACE_S = 5  # seconds the other workers get to end by themselves after one failed, before SIGTERM


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def choose_start_method(requested: str) -> tuple[str, str | None]:
    """The start method to use and, when it differs from the one asked for, why. Ranks start by fork: a forked
    process has the caller's objects as they are, so a module or data class defined inside a test function or a
    notebook cell works (spawn would need them to pickle) and no interpreter re-imports torch. ``ddp_spawn`` is
    forked too: its spawned runs did not yet give the same weights as forked ones and one process on the whole
    batch (tests/strategies/test_ddp_spawn.py pins the forked ones), so spawn is not used. Without fork (Windows)
    the ranks cannot start here."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError(
            f"Trainer(strategy='ddp_{requested}'): the ranks start here by fork, which {sys.platform} does not "
            "have. Run a script with strategy='ddp' (it starts the ranks by running the script once per rank), or "
            "`trainer launch --num-processes N train.py`.")
    if requested == "spawn":
        return "fork", "forked processes get the Trainer, the module and the data as they are, unpickled"
    return "fork", None


def run_in_workers(trainer: Any, stage: str, args: tuple, kwargs: dict, module: Any) -> Any:
    """Run ``getattr(trainer, stage)(*args, **kwargs)`` on ``trainer.strategy.requested_processes`` new processes
    and hand rank zero's results back to ``trainer`` and ``module``; returns the stage's return value."""
    strategy = trainer.strategy
    world = strategy.requested_processes
    requested = strategy.start_method if strategy.start_method != "popen" else "fork"
    method, why = choose_start_method(requested)
    if why is not None:
        rank_zero_info(f"Trainer(strategy='ddp_spawn'): starting the {world} processes with fork, not spawn ({why}).")
    rank_zero_info(f"Starting {world} processes ({method}) for trainer.{stage}(); their results come back here.")
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="trainer-spawn-") as folder:
        port = free_port()
        context = mp.start_processes(_worker, args=(world, port, folder, trainer, stage, args, kwargs),
                                     nprocs=world, join=False, start_method=method)
        try:
            while not context.join(grace_period=_GRACE_S):
                pass
        except ProcessException as failure:  # the worker raised, or its process died
            raise _worker_error(folder, failure, world, stage) from None
        payload = torch.load(os.path.join(folder, _RESULT), weights_only=False, map_location="cpu")
    return _restore(trainer, module, payload)


def _worker(rank: int, world: int, port: int, folder: str, trainer: Any, stage: str, args: tuple,
            kwargs: dict) -> None:
    """One rank: its environment as a launcher would set it, the stage, and (rank zero) the results to a file."""
    from trainer.engine.script_launch import SAVED_MARKERS_ENV

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[SAVED_MARKERS_ENV] = folder  # a peer's SIGTERM after this rank failed ends it at once
    strategy = trainer.strategy
    strategy.processes.forget_environment()  # read again: now a launched rank
    try:
        strategy.setup()  # the Accelerator skipped it in the caller, which only starts workers
        result = getattr(trainer, stage)(*args, **kwargs)
        if rank == 0:
            torch.save(_collect(trainer, result), os.path.join(folder, _RESULT))
    except BaseException as err:
        _report_failure(folder, rank, err)
        raise
    finally:
        from trainer.strategies.process_group import destroy_process_group

        destroy_process_group()


def _report_failure(folder: str, rank: int, err: BaseException) -> None:
    """The error, pickled (or its text), for the caller; the first failing rank also leaves the teardown
    marker, so a peer stopped by SIGTERM exits at once instead of saving."""
    from trainer.engine.script_launch import TEARDOWN_MARKER

    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        blob = pickle.dumps(err)
        pickle.loads(blob)
    except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as its text
        blob = None
    first = not os.path.exists(os.path.join(folder, TEARDOWN_MARKER))
    with open(os.path.join(folder, f"error-rank{rank}.pkl"), "wb") as f:
        pickle.dump({"error": blob, "text": text, "type": type(err).__name__}, f)
    if first:
        with open(os.path.join(folder, f"{_PRIMARY}-rank{rank}"), "w"):
            pass
        with open(os.path.join(folder, TEARDOWN_MARKER), "w"):
            pass


def _worker_error(folder: str, failure: Any, world: int, stage: str) -> BaseException:
    """The error to raise in the caller: the first failing rank's own exception (re-raised with a note naming
    the rank and carrying its traceback), else a RuntimeError saying how the process ended."""
    names = os.listdir(folder)
    firsts = sorted(int(n.rsplit("rank", 1)[1]) for n in names if n.startswith(_PRIMARY))
    rank = firsts[0] if firsts else int(failure.error_index)
    where = f"rank {rank} of {world} (a process trainer.{stage}() started)"
    path = os.path.join(folder, f"error-rank{rank}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            report = pickle.load(f)
        err = pickle.loads(report["error"]) if report["error"] is not None else None
        if isinstance(err, BaseException):
            if hasattr(err, "add_note"):
                err.add_note(f"Raised on {where}. Its traceback there:\n{report['text']}")
            return err
        return RuntimeError(f"{where} failed with {report['type']} (it does not pickle, so it cannot be raised "
                            f"here as itself):\n{report['text']}")
    return RuntimeError(f"{where} ended without a Python error: {failure}. It was killed, or crashed "
                        "(out of memory?); its output above may say more.")


# -- what comes back ------------------------------------------------------------------------------
_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    """Data that means the same in another process: numbers, strings, tensors, and lists/tuples/dicts of them."""
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, _PLAIN) and _plain(v) for k, v in value.items())
    return False


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    return value


def _collect(trainer: Any, result: Any) -> dict:
    """Rank zero's results, as plain data and tensors on the CPU."""
    module = trainer.module
    callbacks = [(type(callback).__qualname__, {k: _cpu(v) for k, v in vars(callback).items() if _plain(v)})
                 for callback in trainer.callbacks]
    state = {k: v for k, v in dataclasses.asdict(trainer.state).items() if k != "stage"}
    return {
        "weights": _cpu(module.state_dict()) if module is not None else None,
        "state": state,
        "callback_metrics": _cpu(dict(trainer.callback_metrics)),
        "logged_metrics": _cpu(dict(trainer.logged_metrics)),
        "progress_bar_metrics": _cpu(dict(trainer.progress_bar_metrics)),
        "callbacks": callbacks,
        "trainer": {k: _cpu(getattr(trainer, k)) for k in ("interrupted", "ckpt_path", "predictions",
                                                            "predict_batch_indices")
                    if _plain(getattr(trainer, k, None))},
        "result": _cpu(result) if _plain(result) else None,
    }


def _restore(trainer: Any, module: Any, payload: dict) -> Any:
    """Rank zero's results into the caller's Trainer and module; returns the stage's return value."""
    if module is not None and payload["weights"] is not None:
        module.load_state_dict(payload["weights"])
        trainer.module = module
        module.attach(trainer)
    for name, value in payload["state"].items():
        setattr(trainer.state, name, value)
    for name in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
        target = getattr(trainer, name)  # the Trainer's own dict: filled in place
        target.clear()
        target.update(payload[name])
    sent: dict[str, list[dict]] = {}  # the k-th callback of a class here is the k-th of that class there
    for kind, values in payload["callbacks"]:
        sent.setdefault(kind, []).append(values)
    for callback in trainer.callbacks:
        same = sent.get(type(callback).__qualname__)
        if same:
            for name, value in same.pop(0).items():
                setattr(callback, name, value)
    for name, value in payload["trainer"].items():
        setattr(trainer, name, value)
    return payload["result"]
