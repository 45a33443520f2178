"""Loggers are callbacks that also receive metric rows. ``CSVLogger`` needs no extra package."""

from __future__ import annotations

import atexit
import csv
import os
import queue
import threading
import weakref
from typing import Any, Callable

from .base import Callback
from .view import TrainerView


class BackgroundWriter:
    """One logger's writer thread: the calls queued with ``submit`` run there, one at a time, in the
    order they were queued, so the training thread only hands over values it has already read back.

    A call that raises stops the writer for that logger (the calls queued after it are dropped, as a
    synchronous write that raised would have stopped training there) and the error is raised on the
    caller's thread at its next ``submit`` or ``wait``, with a note naming the call. The thread is a
    daemon started when a call is queued and ending after a minute with nothing to do (a forked child,
    which inherits no threads, starts its own); writers still holding calls are drained at exit. The
    minute outlasts any log interval worth the name: starting a thread costs the submitting thread a few
    hundred microseconds (a second's idle end made every row of a 5 s log interval pay it)."""

    IDLE_SECONDS = 60.0

    def __init__(self, name: str) -> None:
        self.name = name
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # guards starting the thread, queueing, and the thread's decision to end
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: tuple[BaseException, str, int] | None = None
        # each counter has one writer (the submitting side, the writer thread): no lost update between them
        self._submitted = 0
        self._done = 0

    def __reduce__(self) -> Any:  # a copy or a pickled logger gets a fresh, idle writer
        return (BackgroundWriter, (self.name,))

    @property
    def thread(self) -> threading.Thread | None:
        """The writer thread while it runs (None when idle)."""
        return self._thread

    @property
    def busy(self) -> bool:
        """Calls are queued or running (or an error waits to be raised)."""
        return self._pid == os.getpid() and (self._submitted != self._done or self._error is not None)

    def submit(self, fn: Callable[..., Any], what: str, *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``; ``what`` names it in an error. Raises a previous call's error."""
        if self._pid != os.getpid():
            self._reset()
        self.raise_error()
        self._submitted += 1
        self._put((fn, what, args, kwargs))

    def _put(self, item: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"trainer-{self.name}-writer", daemon=True)
                self._thread.start()
                _LIVE_WRITERS.add(self)
            self._queue.put(item)

    def wait(self, raise_errors: bool = True) -> None:
        """Block until every queued call ran; then raise the first error one raised (``raise_errors``),
        or leave it for the next call."""
        if self._pid == os.getpid() and self._submitted != self._done \
                and threading.current_thread() is not self._thread:  # a write that waits would wait for itself
            done = threading.Event()
            self._put(done)
            done.wait()
        if raise_errors:
            self.raise_error()

    def stop(self) -> None:
        """End the writer thread now, once what is queued ran (rather than after its idle second): the end
        of a stage leaves no thread of ours behind. The next ``submit`` starts a new one."""
        if self._pid != os.getpid():
            return
        with self._lock:
            thread = self._thread
            if thread is None or thread is threading.current_thread():
                return
            self._thread = None
            self._queue.put(_STOP)  # behind every queued call; a new thread takes what is queued after it
        thread.join()

    def raise_error(self) -> None:
        if self._error is None:
            return
        self.wait(raise_errors=False)  # the calls queued behind the failed one are dropped before it is raised
        err, what, dropped = self._error
        self._error = None
        _add_note(err, f"(raised by {what} in the logger's background writer thread {self.name!r}"
                  + (f"; the {dropped} call(s) queued after it were not written" if dropped else "") + ")")
        raise err

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            fn, what, args, kwargs = item
            try:
                if self._error is None:
                    fn(*args, **kwargs)
                else:
                    self._error = (self._error[0], self._error[1], self._error[2] + 1)
            except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread, never swallowed
                self._error = (err, what, 0)
            finally:
                self._done += 1
            del fn, args, kwargs, item  # no reference to the row outlives its write


_STOP = object()  # BackgroundWriter.stop's sentinel


def _add_note(err: BaseException, note: str) -> None:
    if hasattr(err, "add_note"):  # Python 3.11+; on 3.10 the error goes up as it was raised
        err.add_note(note)


_LIVE_WRITERS: "weakref.WeakSet[BackgroundWriter]" = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    for writer in list(_LIVE_WRITERS):
        try:
            writer.wait(raise_errors=False)
        except BaseException:  # noqa: BLE001 -- exiting anyway
            pass


class Logger(Callback):
    """Base of every logger: ``log_metrics`` gets rows at log intervals, on rank zero only.

    The Trainer and the Accelerator never call ``log_metrics``/``log_hyperparams`` on the training
    thread: they queue them (``enqueue_metrics``, ``enqueue_hyperparams``) on the logger's
    ``BackgroundWriter`` with values already read back as Python numbers, and wait for the writes
    (``flush_writes``) before ``finalize`` at the end of each stage, on an exception and at teardown.
    A direct call of ``log_metrics`` still runs where it is made.

    Args:
        save_dir: the folder under which runs are written.
        name: the experiment's folder inside ``save_dir``.
        version: the run's folder inside that: an int (``version_<n>``) or a name; None takes the
            next free ``version_<n>``.
    """

    def __init__(self, save_dir: str = "runs", name: str = "lightning_logs", version: int | str | None = None) -> None:
        self.save_dir = str(save_dir)
        self.name = name
        self._version = version

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(os.path.join(self.save_dir, self.name))
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.save_dir, self.name, version)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def finalize(self, status: str) -> None: ...

    @property
    def background_writer(self) -> BackgroundWriter:
        """This logger's writer thread (made on first use: a subclass need not call ``__init__``)."""
        writer = self.__dict__.get("_background_writer")
        if writer is None:
            writer = self.__dict__["_background_writer"] = BackgroundWriter(type(self).__name__)
        return writer

    def enqueue_metrics(self, metrics: dict[str, float], step: int) -> None:
        """``log_metrics(metrics=..., step=...)`` on the writer thread (the row is copied: the caller may
        reuse its dict). Raises an earlier queued write's error."""
        self.background_writer.submit(self.log_metrics, f"{type(self).__name__}.log_metrics(step={step})",
                                      metrics=dict(metrics), step=step)

    def enqueue_hyperparams(self, params: dict[str, Any]) -> None:
        """``log_hyperparams(params)`` on the writer thread."""
        self.background_writer.submit(self.log_hyperparams, f"{type(self).__name__}.log_hyperparams", params)

    def flush_writes(self, raise_errors: bool = True) -> None:
        """Wait until every queued write ran; raise the first error one raised (``raise_errors``)."""
        self.background_writer.wait(raise_errors)

    def teardown(self, trainer: TrainerView, module: Any, stage: str) -> None:
        self.flush_writes()  # nothing is left queued past a stage (its end and on_exception waited already)
        self.background_writer.stop()  # nor a thread: it would outlive the stage by its idle second

    def on_exception(self, trainer: TrainerView, module: Any, exception: BaseException) -> None:
        if trainer.is_global_zero:
            try:
                self.flush_writes()
            except BaseException as err:  # noqa: BLE001 -- the exception already raised stays the one raised
                _add_note(exception, f"{type(self).__name__}'s background writer also failed: {err!r}")
            self.finalize("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")


def _next_version(root: str) -> int:
    if not os.path.isdir(root):
        return 0
    taken = [int(d.split("_")[1]) for d in os.listdir(root) if d.startswith("version_") and d.split("_")[1].isdigit()]
    return max(taken, default=-1) + 1


class CSVLogger(Logger):
    """Writes ``<save_dir>/<name>/version_N/metrics.csv`` (one row per logged step) and
    ``hparams.yaml``. Columns grow as new metric names appear; the file is rewritten then.

    Args:
        save_dir: root directory of runs.
        name: experiment name (a sub-directory).
        version: an int or a string; by default the next free ``version_N``.
        flush_every: write buffered rows to disk after this many (and always at the end).
    """

    def __init__(self, save_dir: str = "runs", name: str = "lightning_logs", version: int | str | None = None,
                 flush_every: int = 100) -> None:
        super().__init__(save_dir, name, version)
        self.flush_every = flush_every
        self._rows: list[dict[str, Any]] = []
        self._pending = 0
        self._columns: list[str] = ["step"]
        self._written_columns: list[str] = []

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, "metrics.csv")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **metrics}
        self._columns += [k for k in row if k not in self._columns]
        self._rows.append(row)
        self._pending += 1
        if self._pending >= self.flush_every:
            self.save()

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        import yaml

        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "hparams.yaml"), "w") as f:
            yaml.safe_dump(_plain(params), f, sort_keys=False)

    def save(self) -> None:
        if not self._pending and self._columns == self._written_columns:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        rewrite = self._columns != self._written_columns
        rows = self._rows if rewrite else self._rows[-self._pending:]
        with open(self.metrics_file, "w" if rewrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            if rewrite:
                writer.writeheader()
            writer.writerows(rows)
        self._written_columns = list(self._columns)
        self._pending = 0

    def finalize(self, status: str) -> None:
        self.save()


def _plain(value: Any) -> Any:
    """Hyperparameters as YAML-safe values (anything unusual becomes its repr)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
