"""Lightning's ``ddp_spawn`` / ``ddp_fork`` / ``ddp_notebook``: ranks started from inside the calling interpreter.

``Trainer(strategy="ddp_spawn", devices=2).fit(model, ...)`` in a plain interpreter (a notebook, pytest, ``python
-c``) starts one worker process per device with ``torch.multiprocessing``, each set up as a launched rank (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` on 127.0.0.1) so that the rest of the library sees
what torchrun would give it, and runs the same ``fit``/``validate``/``test``/``predict`` call there on a real gloo
group. ``ddp_spawn`` starts them with the "spawn" start method, as Lightning does: each rank is a fresh interpreter
that gets the Trainer, the module, the data and the caller's random and determinism state pickled (checked here
before any worker starts, so an object that cannot travel is named with the fix), its own copy of every tensor.
``ddp_fork`` / ``ddp_notebook`` fork: the ranks have the caller's objects as they are, nothing pickled (not on
Windows). Rank zero then writes what the caller reads afterwards to a file (``torch.save`` into a private temporary
directory: tensors sent through a multiprocessing queue fail once the worker has exited), and the caller's objects
get it back: the module's weights, the Trainer's counters and metric dicts, the callbacks' plain attributes
(``best_model_path``, ``best_model_score``, ``wait_count``, ...) and the stage's return value. An error in a worker
is raised again in the caller, the same exception type, with a note naming the rank.

``strategy="ddp"`` instead re-runs the script once per rank (trainer/engine/script_launch.py): right for scripts,
wrong inside an interpreter whose "script" is pytest or a notebook kernel.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import os
import pickle
import random
import socket
import sys
import tempfile
import traceback
import types
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


def choose_start_method(requested: str) -> str:
    """The start method for ``requested`` ("fork" or "spawn"), refused where this platform does not have it.
    ``ddp_spawn`` spawns (everywhere); ``ddp_fork``/``ddp_notebook`` fork, which Windows does not have."""
    import multiprocessing

    if requested not in multiprocessing.get_all_start_methods():
        raise RuntimeError(
            f"Trainer(strategy='ddp_fork' or 'ddp_notebook'): these start the ranks by {requested}, which "
            f"{sys.platform} does not have. Use strategy='ddp_spawn' (its ranks are spawned: the module, the data "
            "and the Trainer must pickle), or strategy='ddp' in a script.")
    return requested


def run_in_workers(trainer: Any, stage: str, args: tuple, kwargs: dict, module: Any) -> Any:
    """Run ``getattr(trainer, stage)(*args, **kwargs)`` on ``trainer.strategy.requested_processes`` new processes
    and hand rank zero's results back to ``trainer`` and ``module``; returns the stage's return value."""
    strategy = trainer.strategy
    world = strategy.requested_processes
    method = choose_start_method(strategy.start_method if strategy.start_method != "popen" else "fork")
    if method == "spawn":
        _refuse_while_bootstrapping(stage)
        sent: Any = pickle_for_spawn(trainer, stage, args, kwargs)  # before any worker starts: errors name the object
    else:
        sent = (trainer, stage, args, kwargs)  # forked: the objects as they are
    rank_zero_info(f"Starting {world} processes ({method}) for trainer.{stage}(); their results come back here.")
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="trainer-spawn-") as folder:
        port = free_port()
        context = mp.start_processes(_worker, args=(world, port, folder, sent), nprocs=world, join=False,
                                     start_method=method)
        try:
            while not context.join(grace_period=_GRACE_S):
                pass
        except ProcessException as failure:  # the worker raised, or its process died
            raise _worker_error(folder, failure, world, stage, method) from None
        payload = torch.load(os.path.join(folder, _RESULT), weights_only=False, map_location="cpu")
    return _restore(trainer, module, payload)


def _worker(rank: int, world: int, port: int, folder: str, sent: Any) -> None:
    """One rank: its environment as a launcher would set it, the stage, and (rank zero) the results to a file.
    ``sent`` is (trainer, stage, args, kwargs), or those pickled with the caller's random state (spawned)."""
    from trainer.engine.script_launch import SAVED_MARKERS_ENV

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[SAVED_MARKERS_ENV] = folder  # a peer's SIGTERM after this rank failed ends it at once
    try:
        trainer, stage, args, kwargs = _unpickle_in_worker(sent) if isinstance(sent, bytes) else sent
        strategy = trainer.strategy
        strategy.processes.forget_environment()  # read again: now a launched rank
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


# -- what a spawned rank gets: pickled here, by value ------------------------------------------------
# Plain pickle, not torch.multiprocessing's: that one moves every tensor into shared memory, so the spawned ranks
# got one storage for the module's weights and each rank's optimizer step landed on it (two steps a batch on 2
# ranks: why spawned runs did not give the forked weights). Lightning clones the parameters in the child instead.
_FIX = ("Define it at the top level of an importable module (a .py file; not a lambda, a function or class "
        "defined inside another, or a notebook cell), or use strategy='ddp_fork' (alias 'ddp_notebook'), whose "
        "ranks are forked from this process and need nothing pickled (Linux, macOS).")


def pickle_for_spawn(trainer: Any, stage: str, args: tuple, kwargs: dict) -> bytes:
    """``(trainer, stage, args, kwargs)`` and this process's random/determinism state, pickled for spawned ranks.
    Raises TypeError naming the first object that cannot be pickled (or imported by a spawned process)."""
    sent = (trainer, stage, args, kwargs, _capture_global_state())
    try:
        return _dumps(sent)
    except Exception:  # noqa: BLE001 - any pickling failure: find the object and say how to fix it
        pass
    names = list(inspect.signature(getattr(type(trainer), stage)).parameters)[1:]
    roots = {**dict(zip(names, args)), **kwargs, "trainer": trainer}  # the call's arguments first, by name
    for name, value in roots.items():
        found = _culprit(value, name, set())
        if found is not None:
            path, part, err = found
            raise TypeError(f"Trainer(strategy='ddp_spawn').{stage}(): {path} ({_short(part)}) cannot be sent to "
                            f"the spawned processes: {err}. ddp_spawn starts each rank as a new Python interpreter "
                            f"and pickles the Trainer, the module and the data to it. {_FIX}") from err
    _dumps(sent)  # a failure the search did not place: raise it as it is
    raise AssertionError("unreachable: the payload pickled on the second try")


class _SpawnPickler(pickle.Pickler):
    """Pickles by value, and refuses what a spawned process could not import: a class or function defined in
    ``__main__`` when ``__main__`` is not a file a spawned process runs again (a notebook, the REPL, ``-c``)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__" \
                and not _main_is_importable():
            raise pickle.PicklingError(f"{obj.__qualname__} is defined in __main__ of an interactive session (a "
                                       "notebook, the REPL or python -c), which a spawned process cannot import")
        return NotImplemented


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _SpawnPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _main_is_importable() -> bool:
    """Whether a spawned process has this ``__main__``'s names: multiprocessing imports a script or a ``-m``
    module again (as ``__mp_main__``) in the child, but not a package's ``__main__`` or an interactive session."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name:
        return not name.endswith("__main__")
    return getattr(main, "__file__", None) is not None


def _culprit(value: Any, path: str, seen: set) -> tuple[str, Any, Exception] | None:
    """The innermost part of ``value`` that does not pickle, as (its path, it, the error); None if all does."""
    try:
        _dumps(value)
        return None
    except Exception as err:  # noqa: BLE001
        error = err
    if id(value) not in seen and path.count(".") + path.count("[") < 16:
        seen.add(id(value))
        for name, part in _parts(value):
            found = _culprit(part, path + name, seen)
            if found is not None:
                return found
    return path, value, error


def _parts(value: Any) -> list[tuple[str, Any]]:
    """What pickling ``value`` pickles in turn, each with the path suffix that names it."""
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in value.items()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, (type, types.FunctionType)):
        return []
    try:
        reduced = value.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - refuses itself: it is the culprit
        return []
    if not isinstance(reduced, tuple):
        return []
    state = reduced[2] if len(reduced) > 2 else None
    if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
        state = {**(state[0] or {}), **(state[1] or {})}
    parts: list[tuple[str, Any]] = []
    for key, part in (state.items() if isinstance(state, dict) else ()):
        if key in ("_modules", "_parameters", "_buffers") and isinstance(part, dict):  # nn.Module's children
            parts += [(f".{k}", v) for k, v in part.items()]
        else:
            parts.append((f".{key}", part))
    arguments = reduced[1] if len(reduced) > 1 and isinstance(reduced[1], tuple) else ()
    return parts + [(".__class__" if v is type(value) else f"<argument {i}>", v) for i, v in enumerate(arguments)]


def _short(value: Any) -> str:
    if isinstance(value, (type, types.FunctionType)):
        return f"{'class' if isinstance(value, type) else 'function'} {value.__module__}.{value.__qualname__}"
    return f"a {type(value).__qualname__}"


def _capture_global_state() -> dict:
    """The random generators and determinism settings a forked rank would inherit, for a spawned one."""
    state: dict[str, Any] = {"random": random.getstate(), "torch": torch.get_rng_state(),
                             "deterministic": (torch.are_deterministic_algorithms_enabled(),
                                               torch.is_deterministic_algorithms_warn_only_enabled()),
                             "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)}
    if "numpy" in sys.modules:
        state["numpy"] = sys.modules["numpy"].random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # reading it would initialise CUDA here
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_global_state(state: dict) -> None:
    random.setstate(state["random"])
    torch.set_rng_state(state["torch"])
    enabled, warn_only = state["deterministic"]
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = state["cudnn"]
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unpickle_in_worker(blob: bytes) -> tuple:
    """What the caller pickled (see pickle_for_spawn), with its random state restored in this spawned rank."""
    try:
        trainer, stage, args, kwargs, state = pickle.loads(blob)
    except Exception as err:
        if hasattr(err, "add_note"):
            err.add_note("Raised while a spawned rank of Trainer(strategy='ddp_spawn') unpickled what the caller "
                         f"sent it: a class or function it needs is not importable in a new interpreter. {_FIX}")
        raise
    _restore_global_state(state)
    return trainer, stage, args, kwargs


def _refuse_while_bootstrapping(stage: str) -> None:
    """A spawned process runs the caller's script again before its rank starts; a ``trainer.fit`` at the
    script's top level would then start ranks of its own. Say how to guard it, as the first error the user sees."""
    frame = inspect.currentframe()
    while frame is not None and not (frame.f_globals.get("__name__") == "multiprocessing.spawn"
                                     and frame.f_code.co_name.startswith("_fixup_main")):  # runs the script again
        frame = frame.f_back
    if frame is not None:
        raise RuntimeError(f"Trainer(strategy='ddp_spawn').{stage}() ran while a spawned rank was importing the "
                           "script that started it: a spawned process runs the script's top-level code again. Put "
                           "the training code under `if __name__ == \"__main__\":`, or use strategy='ddp_fork'.")


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


def _worker_error(folder: str, failure: Any, world: int, stage: str, method: str) -> BaseException:
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
    hint = (" A spawned process first runs the caller's script again: training code at the script's top level "
            "belongs under `if __name__ == \"__main__\":`." if method == "spawn" else "")
    return RuntimeError(f"{where} ended without a Python error: {failure}. It was killed, or crashed "
                        f"(out of memory?); its output above may say more.{hint}")


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
