"""Who runs what: the Accelerator's ``state`` view and splitting work between processes."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from trainer.accelerate.operations import DistributedType


def distributed_type(strategy: Any) -> DistributedType:
    """Accelerate's name for how ``strategy`` shares the work: the strategy answers it."""
    return DistributedType(strategy.distributed_type)


class ProcessState:
    """``accelerator.state``: Accelerate's ``AcceleratorState`` names, one per Accelerator (not a
    process-wide singleton; ``trainer.state.AcceleratorState()`` finds the live Accelerator's).

    The facts are plain attributes, fixed when the Accelerator starts, so the state compares, copies
    and pickles by value; ``distributed_type`` may be overridden, as Accelerate's tests do, and the
    Accelerator's ``join_uneven_inputs`` reads it from here.
    """

    __slots__ = ("_accelerator", "__dict__")  # the Accelerator is kept out of __dict__ (compared by value)

    def __init__(self, accelerator: Any) -> None:
        self._accelerator = accelerator
        self.distributed_type = accelerator.distributed_type
        self.num_processes = accelerator.num_processes
        self.process_index = accelerator.process_index
        self.local_process_index = accelerator.local_process_index
        self.device = accelerator.device
        self.mixed_precision = accelerator.mixed_precision
        self.debug = False  # Accelerate's operation checks; accepted, not used (see docs/migrating.md)

    is_main_process = property(lambda self: self.process_index == 0)
    is_local_main_process = property(lambda self: self.local_process_index == 0)
    is_last_process = property(lambda self: self.process_index == self.num_processes - 1)
    use_distributed = property(lambda self: self.num_processes > 1)
    initialized = property(lambda self: True)
    deepspeed_plugin = property(lambda self: self._accelerator.deepspeed_plugin)
    fsdp_plugin = property(lambda self: self._accelerator.fsdp_plugin)

    def main_process_first(self) -> Any:
        return self._accelerator.main_process_first()

    def local_main_process_first(self) -> Any:
        return self._accelerator.local_main_process_first()

    def on_main_process(self, function: Any) -> Any:
        return self._accelerator.on_main_process(function)

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._accelerator.print(*args, **kwargs)

    def wait_for_everyone(self) -> None:
        self._accelerator.wait_for_everyone()

    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Any:
        return self._accelerator.split_between_processes(inputs, apply_padding)

    def destroy_process_group(self, group: Any = None) -> None:
        """Release the process group this Accelerator started (no-op on one process)."""
        self._accelerator.strategy.teardown()

    def __repr__(self) -> str:
        return (f"Distributed environment: {self.distributed_type.value}\nNum processes: {self.num_processes}\n"
                f"Process index: {self.process_index}\nLocal process index: {self.local_process_index}\n"
                f"Device: {self.device}\nMixed precision type: {self.mixed_precision}\n")


@contextlib.contextmanager
def split_between_processes(inputs: Any, num_processes: int, process_index: int,
                            apply_padding: bool = False) -> Iterator[Any]:
    """This process's contiguous share of ``inputs`` (a list, tuple, tensor, or a dict of them, split
    along the first dimension); the first ``len % num_processes`` processes get one more item.
    ``apply_padding``: repeat the share's last item so every share has the same length (to gather them)."""
    if num_processes == 1:
        yield inputs
        return
    yield _share(inputs, num_processes, process_index, apply_padding)


def _share(inputs: Any, num_processes: int, process_index: int, apply_padding: bool) -> Any:
    if isinstance(inputs, dict):
        return {k: _share(v, num_processes, process_index, apply_padding) for k, v in inputs.items()}
    if not isinstance(inputs, (list, tuple, torch.Tensor)):
        raise TypeError(f"split_between_processes(inputs={type(inputs).__name__}): expected a list, tuple, tensor "
                        "or a dict of them.")
    length = len(inputs)
    base, extra = divmod(length, num_processes)
    start = process_index * base + min(process_index, extra)
    end = start + base + (1 if process_index < extra else 0)
    share: Any = inputs[start:end]  # the type of inputs: a list, tuple or tensor
    if apply_padding and length:
        want = base + (1 if extra else 0)
        missing = want - (end - start)
        if missing:
            last: Any = share[-1:] if end > start else inputs[-1:]  # repeat this share's last item
            if isinstance(share, torch.Tensor):
                share = torch.cat([share] + [last] * missing)
            else:
                share = share + type(share)(last) * missing
    return share
