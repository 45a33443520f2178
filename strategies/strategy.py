"""Strategies decide where tensors live and how gradients move.

``Strategy`` is the abstract base the engine talks to; it owns a ``Precision`` by
composition. ``SingleDeviceStrategy`` trains on one device. Distributed strategies
override the collective methods (``reduce``, ``barrier``, ...) and ``no_backward_sync``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Callable, ContextManager, Iterable

import torch

from ._util import apply_to_tensors
from .checkpoint_io import atomic_save, safe_load
from .precision import Precision

REDUCE_OPS = ("mean", "sum", "max", "min")


class Strategy(ABC):
    """Where tensors live and how gradients move; owns the run's ``Precision``.

    Args:
        precision: a ``Precision`` or a precision string (see ``Precision.from_string``).
    """

    #: how processes share the work, for ``Accelerator.distributed_type``: "NO" (one process),
    #: "MULTI" (replicas), "FSDP" or "DEEPSPEED"
    distributed_kind = "NO"

    def __init__(self, precision: Precision | str | None = None) -> None:
        self.precision = Precision.from_string(precision or "32-true", owner="Strategy(precision=...)")

    # -- who and where ------------------------------------------------------------------
    @property
    @abstractmethod
    def root_device(self) -> torch.device: ...

    @property
    def world_size(self) -> int:
        return 1

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    # -- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        """Prepare the environment (devices, process groups) before any module is touched."""
        self.precision.setup(self.root_device)

    def module_init_context(self) -> ContextManager:
        """Where ``TrainModule.configure_model`` creates its layers (FSDP: the meta device)."""
        return contextlib.nullcontext()

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move the module to the device, convert it for the precision, wrap it if needed."""
        return self.precision.convert_module(module.to(self.root_device))

    def setup_trainer_module(self, module: torch.nn.Module,
                             manual: bool = False) -> tuple[torch.nn.Module, Callable[..., Any]]:
        """For the Trainer: the prepared model and the callable that runs ``training_step``
        (a distributed strategy routes it through its wrapper so gradients sync). ``manual``: the
        module steps its own optimizers and calls backward itself (manual optimization)."""
        return self.setup_module(module), module.training_step

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Move optimizer state (e.g. Adam moments loaded from elsewhere) to the device."""
        device = self.root_device
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device)
        return optimizer

    def unwrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def batch_to_device(self, batch: Any) -> Any:
        device = self.root_device
        if device.type == "cpu" and self.precision.param_dtype is None and _flat_on_cpu(batch):
            return batch  # nothing to move or convert: skip rebuilding the batch
        non_blocking = device.type == "cuda"
        batch = apply_to_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))
        return self.precision.convert_input(batch)

    # -- the training step --------------------------------------------------------------
    def forward_context(self) -> ContextManager:
        return self.precision.forward_context()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward(*args, **kwargs)`` with the precision's loss scaling."""
        self.precision.backward(loss, *args, **kwargs)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Manual optimization: make these gradients the mean over processes (the backward did not
        run through a wrapper that syncs). Nothing to do on one process."""
        return None

    def no_backward_sync(self, module: torch.nn.Module) -> ContextManager:
        """Context for micro-steps that do not step the optimizer: gradients must not be
        all-reduced there. Nothing to skip on one device."""
        return contextlib.nullcontext()

    # Trainer(oom_split=True): micro-batches run without any collective, gradients sync once per window
    oom_split_refusal: str | None = None  # why this strategy cannot split a micro-batch (None: it can)

    def local_training_step(self, module: torch.nn.Module) -> Callable[..., Any]:
        """``training_step`` with no communication in its forward or backward."""
        return module.training_step

    def all_reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the locally accumulated gradients over processes (nothing to do on one)."""
        return None

    def force_backward_sync(self, module: torch.nn.Module) -> ContextManager:
        """Context in which backward all-reduces gradients even if the forward ran under
        ``no_backward_sync`` (Accelerate's ``trigger_sync_in_backward``). Nothing to do on one device."""
        return contextlib.nullcontext()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self.precision.unscale_gradients(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        return self.precision.optimizer_step(optimizer, closure)

    def zero_grad(self, optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        optimizer.zero_grad(set_to_none=set_to_none)

    def clip_grad_norm_(self, parameters: Iterable[torch.nn.Parameter], max_norm: float,
                        norm_type: float = 2.0) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type=norm_type)

    def clip_grad_value_(self, parameters: Iterable[torch.nn.Parameter], clip_value: float) -> None:
        torch.nn.utils.clip_grad_value_(list(parameters), clip_value)

    # -- collectives (trivial on one process) -------------------------------------------
    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unsqueeze(0)

    def barrier(self, name: str | None = None) -> None:
        return None

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` from every process, in rank order."""
        return [obj]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def teardown(self) -> None:
        return None

    def explain_failure(self, err: BaseException) -> BaseException | None:
        """A clearer error for ``err`` when it is a failed collective (another rank died or hung), else None."""
        return None

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str) -> None:
        """Write a full checkpoint atomically (rank zero writes; others wait)."""
        if self.is_global_zero:
            atomic_save(checkpoint, path)
        self.barrier("save_checkpoint")

    def load_checkpoint(self, path: str) -> Any:
        return safe_load(path, map_location="cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.root_device}, precision={self.precision.name!r})"


def _flat_on_cpu(batch: Any) -> bool:
    """A tensor, or a plain tuple/list/dict of tensors, all on the CPU (the common batch shapes)."""
    kind = type(batch)
    if kind is torch.Tensor:
        return batch.device.type == "cpu"
    if kind is tuple or kind is list:
        values: Any = batch
    elif kind is dict:
        values = batch.values()
    else:
        return False
    for value in values:
        if type(value) is not torch.Tensor or value.device.type != "cpu":
            return False
    return True


class SingleDeviceStrategy(Strategy):
    """Train on one device.

    Args:
        device: e.g. ``"cpu"``, ``"cuda:0"``, ``torch.device("mps")``.
        precision: see ``Precision``.

    Example:
        >>> SingleDeviceStrategy("cpu", precision="bf16-mixed")
        SingleDeviceStrategy(device=cpu, precision='bf16-mixed')
    """

    def __init__(self, device: str | torch.device = "cpu", precision: Precision | str | None = None) -> None:
        super().__init__(precision)
        self._device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._device

    def setup(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        super().setup()
