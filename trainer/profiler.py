"""``Trainer(profiler="simple" | "pytorch")``: where the time of a fit goes.

With a profiler the Trainer times its phases -- fetching a batch, moving it to the device,
``training_step``, backward, optimizer step, zero_grad, validation, the sanity check -- and every
hook of the module and of each callback. Each action's time is its *own* time (a nested action's
time is taken out of its parent's), and the stage itself is the root action, whose own time is the
loop's remaining overhead: the rows of the table add up to the stage's wall time.

Without a profiler (the default) nothing is wrapped or timed: the loop runs exactly as before.

    "simple"    SimpleProfiler: a table printed on rank zero at the end of fit/validate/test/predict
    "pytorch"   PyTorchProfiler: the same actions as ``record_function`` ranges in a torch.profiler
                trace (``*.pt.trace.json``, one per process) under ``<log_dir>/profiler``; open it with
                ``tensorboard --logdir <log_dir>`` (the torch-tb-profiler plugin) or chrome://tracing
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterable, Iterator

from trainer.loops.hooks import Hooks
from trainer.logs.console import rank_zero_info

# hook names that open and close a phase of the loop (the phase's own time is what its hooks and
# steps leave over: e.g. validation's data loading and validation_step)
_PHASES = {"on_validation_start": ("start", "validation"), "on_validation_end": ("stop", "validation"),
           "on_test_start": ("start", "test"), "on_test_end": ("stop", "test"),
           "on_predict_start": ("start", "predict"), "on_predict_end": ("stop", "predict"),
           "on_sanity_check_start": ("start", "sanity_check"), "on_sanity_check_end": ("stop", "sanity_check")}


class Profiler:
    """Base: records each action's own time (nested actions subtracted), per action name."""

    def __init__(self) -> None:
        self.recorded: dict[str, list[float]] = {}  # action -> own time of each call, in seconds
        self._stack: list[list[Any]] = []           # [action, start time, time spent in children]

    def start(self, action: str) -> None:
        self._stack.append([action, time.perf_counter(), 0.0])

    def stop(self, action: str) -> None:
        now = time.perf_counter()
        while self._stack:  # an exception may have left inner actions open: close them too
            name, began, children = self._stack.pop()
            spent = now - began
            self.recorded.setdefault(name, []).append(spent - children)
            if self._stack:
                self._stack[-1][2] += spent
            if name == action:
                return

    @contextlib.contextmanager
    def profile(self, action: str) -> Iterator[None]:
        self.start(action)
        try:
            yield
        finally:
            self.stop(action)

    def wrap(self, fn: Callable[..., Any], action: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.start(action)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stop(action)
        return timed

    def profile_iterable(self, iterable: Iterable[Any], action: str) -> Iterator[Any]:
        """Time each ``next()`` of ``iterable`` (fetching a batch)."""
        iterator = iter(iterable)
        while True:
            self.start(action)
            try:
                item = next(iterator)
            except StopIteration:
                self.stop(action)
                return
            self.stop(action)
            yield item

    def step(self) -> None:
        """One training batch is done (the PyTorch profiler counts them)."""

    def setup(self, trainer: Any, stage: str) -> None:
        self.recorded = {}
        self._stack = []

    def teardown(self, trainer: Any, stage: str) -> str:
        """Close the stage; returns the report to print (empty for none)."""
        return ""

    # -- the table ------------------------------------------------------------------------------
    def summary(self, stage: str) -> str:
        """The actions sorted by their total own time; the rows add up to the stage's total."""
        rows = sorted(((name, len(times), sum(times)) for name, times in self.recorded.items()),
                      key=lambda row: -row[2])
        total = sum(row[2] for row in rows)
        width = max([len("Action"), *(len(name) for name, _, _ in rows)])
        lines = [f"Profiler report ({stage}): own time of each action (nested actions are not counted twice)",
                 f"{'Action':<{width}}  {'Calls':>7}  {'Mean (s)':>10}  {'Total (s)':>10}  {'%':>6}"]
        lines.append("-" * len(lines[-1]))
        for name, calls, spent in rows:
            label = f"{name} (loop overhead)" if name == stage else name
            lines.append(f"{label:<{width}}  {calls:>7}  {spent / calls:>10.6f}  {spent:>10.6f}  "
                         f"{100 * spent / total if total else 0:>6.2f}")
        lines.append("-" * len(lines[1]))
        lines.append(f"{'Total':<{width}}  {'':>7}  {'':>10}  {total:>10.6f}  {100.0 if total else 0:>6.2f}")
        return "\n".join(lines)


class SimpleProfiler(Profiler):
    """Lightning's ``SimpleProfiler``: a table of the time spent in each action, printed on rank zero
    when the stage ends (and written to ``dirpath/filename`` when given)."""

    def __init__(self, dirpath: str | None = None, filename: str | None = None) -> None:
        super().__init__()
        self.dirpath, self.filename = dirpath, filename

    def teardown(self, trainer: Any, stage: str) -> str:
        report = self.summary(stage)
        if self.dirpath and self.filename and trainer.is_global_zero:
            os.makedirs(self.dirpath, exist_ok=True)
            with open(os.path.join(self.dirpath, f"{stage}-{self.filename}.txt"), "w") as f:
                f.write(report + "\n")
        return report


class PyTorchProfiler(Profiler):
    """Lightning's ``PyTorchProfiler``: a ``torch.profiler`` trace of the first ``num_steps`` training
    batches (or of the whole stage when it is shorter), each action a ``record_function`` range.

    Args:
        dirpath: where the traces go (default ``<trainer.log_dir>/profiler``).
        num_steps: how many training batches to record (the trace is written when they are done).
        record_shapes, profile_memory, with_stack: passed to ``torch.profiler.profile``.
    """

    def __init__(self, dirpath: str | None = None, num_steps: int = 5, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False) -> None:
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"PyTorchProfiler(num_steps={num_steps!r}): expected a positive int (training batches "
                             "to record).")
        self.dirpath, self.num_steps = dirpath, num_steps
        self._options: dict[str, Any] = {"record_shapes": record_shapes, "profile_memory": profile_memory, "with_stack": with_stack}
        self._torch_profile: Any = None
        self._ranges: list[Any] = []
        self._steps = 0
        self.trace_dir: str | None = None

    def setup(self, trainer: Any, stage: str) -> None:
        super().setup(trainer, stage)
        import torch
        from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

        self.trace_dir = self.dirpath or os.path.join(trainer.log_dir, "profiler")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        handler = tensorboard_trace_handler(self.trace_dir, worker_name=f"{stage}-rank{trainer.global_rank}")
        self._torch_profile = profile(activities=activities, on_trace_ready=handler, **self._options)
        self._torch_profile.start()
        self._steps = 0

    def start(self, action: str) -> None:
        super().start(action)
        if self._torch_profile is not None:
            from torch.profiler import record_function

            span = record_function(action)
            span.__enter__()
            self._ranges.append(span)

    def stop(self, action: str) -> None:
        depth = len(self._stack)
        super().stop(action)
        for _ in range(depth - len(self._stack)):  # the ranges mirror the stack of open actions
            if self._ranges:
                self._ranges.pop().__exit__(None, None, None)

    def step(self) -> None:
        self._steps += 1
        if self._steps == self.num_steps:
            self._finish()

    def _finish(self) -> None:
        if self._torch_profile is None:
            return
        while self._ranges:
            self._ranges.pop().__exit__(None, None, None)
        profile, self._torch_profile = self._torch_profile, None
        profile.stop()  # writes the trace (on_trace_ready)
        self._report = profile.key_averages().table(sort_by="cpu_time_total", row_limit=15)

    def teardown(self, trainer: Any, stage: str) -> str:
        self._finish()
        return f"PyTorch profiler trace in {self.trace_dir}\n{getattr(self, '_report', '')}"


_PROFILERS = {"simple": SimpleProfiler, "pytorch": PyTorchProfiler}


def resolve_profiler(value: Any) -> Profiler | None:
    """``Trainer(profiler=...)``: None/False for none, "simple", "pytorch", or a Profiler object."""
    if value is None or value is False:
        return None
    if isinstance(value, Profiler):
        return value
    if isinstance(value, str) and value.lower() in _PROFILERS:
        return _PROFILERS[value.lower()]()
    fix = " 'advanced' (cProfile) is not available: use 'simple' for a table, or 'pytorch' for operator detail." \
        if value == "advanced" else ""
    raise ValueError(f"Trainer(profiler={value!r}): expected None, 'simple', 'pytorch', or a Profiler object "
                     f"(trainer.profiler.SimpleProfiler / PyTorchProfiler).{fix}")


class ProfiledHooks(Hooks):
    """``Hooks`` that time each module and callback hook, and open/close the loop's phases."""

    def __init__(self, trainer: Any, module: Any, callbacks: list[Any], profiler: Profiler) -> None:
        super().__init__(trainer, module, callbacks)
        self._profiler = profiler

    def has(self, name: str) -> bool:
        return name == "on_train_batch_end" or super().has(name)  # it counts the profiler's steps

    def __call__(self, name: str, *args: Any) -> Any:
        phase = _PHASES.get(name)
        if phase is not None and phase[0] == "start":
            self._profiler.start(phase[1])
        result = super().__call__(name, *args)
        if phase is not None and phase[0] == "stop":
            self._profiler.stop(phase[1])
        elif name == "on_train_batch_end":
            self._profiler.step()
        return result

    def _run(self, targets: list[tuple[str, Callable]], name: str, args: tuple) -> Any:
        if not targets:
            return None
        profiler = self._profiler
        result = None
        for owner, fn in targets:
            label = owner.replace(" (the TrainModule)", "").replace("callback ", "")
            profiler.start(f"[{label}].{name}")
            try:
                out = super()._run([(owner, fn)], name, args)
            finally:
                profiler.stop(f"[{label}].{name}")
            result = out if out is not None else result
        return result


def start_profiling(trainer: Any, profiler: Profiler, stage: str) -> Callable[[], None]:
    """Time the stage, with the stage as the root action; the step engine times the strategy's step
    calls (backward, clip, optimizer step, zero_grad, batch to device) once the profiler is attached
    to it (``attach_profiler``), so the strategy object is never touched. The returned function ends the stage
    and prints the report on rank zero."""
    engine = trainer.accelerator.engine
    engine.attach_profiler(profiler)
    profiler.setup(trainer, stage)
    profiler.start(stage)
    profiler.start("setup")  # configure_model, the strategy's set-up, configure_optimizers (the Trainer stops it)

    def stop() -> None:
        profiler.stop(stage)
        engine.attach_profiler(None)
        report = profiler.teardown(trainer, stage)
        if report and trainer.is_global_zero:
            rank_zero_info(report)

    return stop
