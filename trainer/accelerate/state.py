"""Accelerate's state names (``AcceleratorState``, ``GradientState``, ``PartialState``) for hand-written
loops; public as ``trainer.state``."""

from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Any, Callable, Iterator


# -- Accelerate's state objects ------------------------------------------------------------------
# Accelerate keeps one process-wide state that every ``AcceleratorState()`` call shares. Here each
# Accelerator owns its state; these names only *find* it: ``AcceleratorState()`` and
# ``GradientState()`` return the state of the newest Accelerator still alive in this process (a
# weak reference each, so nothing outlives its Accelerator), and ``PartialState()`` reads the
# launcher's environment. Nothing is shared or reset behind an Accelerator's back.

_accelerators: list[weakref.ref] = []  # Accelerators created in this process, oldest first


def register_accelerator(accelerator: Any) -> None:
    """Called by ``Accelerator.__init__``: ``AcceleratorState()`` finds the newest live one."""
    _accelerators[:] = [ref for ref in _accelerators if ref() is not None]
    _accelerators.append(weakref.ref(accelerator))


def live_accelerator(asked: str) -> Any:
    """The newest Accelerator still alive in this process; a clear error when there is none."""
    for ref in reversed(_accelerators):
        accelerator = ref()
        if accelerator is not None:
            return accelerator
    raise RuntimeError(f"{asked}: no Accelerator exists in this process. Here the state belongs to an Accelerator "
                       "(there is no process-wide state to create): construct `accelerator = Accelerator(...)` first "
                       "and read `accelerator.state` / `accelerator.gradient_state`, or use `PartialState()` for the "
                       "process environment (index, count, main process) before any Accelerator exists.")


class _FoundOnTheAccelerator(type):
    """Calling the class returns the live Accelerator's object; ``isinstance`` accepts that object."""

    _find: Callable[..., Any]  # each class of this metaclass defines both (static methods)
    _kind: Callable[[], type]

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._find(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, cls._kind())


class AcceleratorState(metaclass=_FoundOnTheAccelerator):
    """``AcceleratorState()`` is the newest live Accelerator's ``accelerator.state`` (distributed_type,
    num_processes, process_index, device, mixed_precision, wait_for_everyone, split_between_processes,
    ...). Constructing it without an Accelerator is an error: the Accelerator makes the state.

    Example:
        >>> accelerator = Accelerator()                      # doctest: +SKIP
        >>> AcceleratorState() is accelerator.state          # doctest: +SKIP
        True
    """

    @staticmethod
    def _kind() -> type:
        from trainer.accelerate.processes import ProcessState

        return ProcessState

    @staticmethod
    def _find(*args: Any, **kwargs: Any) -> Any:
        if args or set(kwargs) - {"cpu"}:
            shown = ", ".join([repr(a) for a in args] + [f"{k}=..." for k in kwargs])
            raise TypeError(f"AcceleratorState({shown}): the state is made by the Accelerator; pass these settings to "
                            "Accelerator(...) and call AcceleratorState() without arguments.")
        return live_accelerator("AcceleratorState()").state

    @staticmethod
    def _reset_state(reset_partial_state: bool = False) -> None:
        """Accelerate clears its shared state with this; each Accelerator owns its own here, so there is
        nothing to clear (an existing Accelerator keeps working)."""


class GradientState(metaclass=_FoundOnTheAccelerator):
    """``GradientState()`` is the newest live Accelerator's ``accelerator.gradient_state`` (sync_gradients,
    active_dataloader, end_of_dataloader, remainder, num_steps)."""

    @staticmethod
    def _kind() -> type:
        from trainer.engine.gradient_state import GradientState as PerAccelerator

        return PerAccelerator

    @staticmethod
    def _find(gradient_accumulation_plugin: Any = None) -> Any:
        state = live_accelerator("GradientState()").gradient_state
        if gradient_accumulation_plugin is not None and gradient_accumulation_plugin.num_steps != state.num_steps:
            raise ValueError(f"GradientState(gradient_accumulation_plugin=...num_steps="
                             f"{gradient_accumulation_plugin.num_steps}): the live Accelerator accumulates "
                             f"{state.num_steps} steps; pass the plugin to Accelerator(...) instead.")
        return state

    @staticmethod
    def _reset_state() -> None:
        """Nothing to clear: each Accelerator owns its gradient state."""


class ProcessDecorators:
    """``@on_main_process``, ``@on_process(process_index=...)`` and their kin, shared by ``PartialState`` and the
    ``Accelerator``: each runs the function where the condition holds and returns None elsewhere. The class
    using it answers ``is_main_process``, ``is_local_main_process``, ``is_last_process``, ``process_index``
    and ``local_process_index`` (attributes or properties: ``self`` is typed ``Any`` below for that reason)."""

    @staticmethod
    def _only_if(function: Callable, condition: Callable[[], bool]) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs) if condition() else None
        return wrapper

    def on_main_process(self: Any, function: Callable) -> Callable:
        """Decorator: run ``function`` only on the main process (None elsewhere)."""
        return self._only_if(function, lambda: self.is_main_process)

    def on_local_main_process(self: Any, function: Callable) -> Callable:
        return self._only_if(function, lambda: self.is_local_main_process)

    def on_last_process(self: Any, function: Callable) -> Callable:
        return self._only_if(function, lambda: self.is_last_process)

    def on_process(self: Any, function: Callable | None = None, process_index: int | None = None) -> Callable:
        if function is None:
            return functools.partial(self.on_process, process_index=process_index)
        if process_index is None:
            raise TypeError("on_process(...): name the process, e.g. @on_process(process_index=0).")
        return self._only_if(function, lambda: self.process_index == process_index)

    def on_local_process(self: Any, function: Callable | None = None, local_process_index: int | None = None) -> Callable:
        if function is None:
            return functools.partial(self.on_local_process, local_process_index=local_process_index)
        if local_process_index is None:
            raise TypeError("on_local_process(...): name the process, e.g. "
                            "@on_local_process(local_process_index=0).")
        return self._only_if(function, lambda: self.local_process_index == local_process_index)


class PartialState(ProcessDecorators):
    """The process environment before (or without) an Accelerator, as Hugging Face code reads it:
    ``process_index``, ``num_processes``, ``is_main_process``, ``device``, ``main_process_first()``,
    ``split_between_processes()``, ``wait_for_everyone()``, ``on_main_process``, ...

    Read from the launcher's variables (torchrun, ``trainer launch``, SLURM). With several processes
    the default process group is joined (or started) at construction, as an Accelerator created later
    would; that Accelerator then uses the same group. Every ``PartialState()`` reads the same
    environment, so two of them agree without sharing anything.

    Args:
        cpu: use the CPU even when a GPU is present.

    Example:
        >>> state = PartialState()
        >>> with state.main_process_first():
        ...     pass  # e.g. tokenize and cache a dataset once
    """

    def __init__(self, cpu: bool = False, **kwargs: Any) -> None:
        import torch

        from trainer.strategies.environment import detect_environment

        unknown = set(kwargs) - {"backend", "timeout"}
        if unknown:
            raise TypeError(f"PartialState({', '.join(sorted(unknown))}=...): unknown argument(s); expected cpu=, "
                            "backend=, timeout=.")
        env = detect_environment()
        self.num_processes = env.world_size
        self.process_index = env.global_rank
        self.local_process_index = env.local_rank
        self.cpu = cpu or not torch.cuda.is_available()
        self.device = torch.device("cpu") if self.cpu else torch.device("cuda", env.local_rank)
        self.backend = kwargs.get("backend") or ("gloo" if self.cpu else "nccl")
        self.debug = False
        if self.num_processes > 1:
            from trainer.strategies.process_group import ProcessGroup

            ProcessGroup(device_kind=self.device.type, backend=self.backend, timeout=kwargs.get("timeout"),
                         environment=env, owner="PartialState").setup()

    @property
    def distributed_type(self) -> Any:
        from trainer.accelerate.operations import DistributedType

        if self.num_processes == 1:
            return DistributedType.NO
        return DistributedType.MULTI_GPU if self.device.type == "cuda" else DistributedType.MULTI_CPU

    @property
    def initialized(self) -> bool:
        return True

    @property
    def use_distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_process_index == 0

    @property
    def is_last_process(self) -> bool:
        return self.process_index == self.num_processes - 1

    @property
    def default_device(self) -> Any:
        return self.device

    def wait_for_everyone(self) -> None:
        """A barrier over every process (nothing on one process)."""
        import torch.distributed as dist

        if self.num_processes > 1 and dist.is_initialized():
            dist.barrier()

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """This process's contiguous share of a list, tuple, tensor or dict of them (see
        ``Accelerator.split_between_processes``)."""
        from trainer.accelerate.processes import split_between_processes

        with split_between_processes(inputs, self.num_processes, self.process_index, apply_padding) as share:
            yield share

    @contextlib.contextmanager
    def _goes_first(self, first: bool) -> Iterator[None]:
        if not first:
            self.wait_for_everyone()
        yield
        if first:
            self.wait_for_everyone()

    def main_process_first(self) -> Any:
        """The main process runs the block first (e.g. download, cache), then the others."""
        return self._goes_first(self.is_main_process)

    def local_main_process_first(self) -> Any:
        """Each machine's first process runs the block first, then the others."""
        return self._goes_first(self.is_local_main_process)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_local_main_process:
            print(*args, **kwargs)

    def destroy_process_group(self, group: Any = None) -> None:
        """Release the default process group (every process must call it)."""
        from trainer.strategies.process_group import destroy_process_group

        if self.num_processes > 1:
            destroy_process_group()

    @staticmethod
    def _reset_state() -> None:
        """Nothing to clear: ``PartialState()`` reads the environment every time."""

    def __repr__(self) -> str:
        return (f"Distributed environment: {self.distributed_type.value}\nNum processes: {self.num_processes}\n"
                f"Process index: {self.process_index}\nLocal process index: {self.local_process_index}\n"
                f"Device: {self.device}\n")


__all__ = ["AcceleratorState", "GradientState", "PartialState", "TrainerState"]
