"""Strategies decide where tensors live and how gradients move.

``Strategy`` is the abstract base the engine talks to, and its methods and typed attributes are
the whole contract: the loop, the Accelerator and the callbacks use nothing else, and every
ability has a default here (a strategy that cannot do a thing says so from its own method). It
owns a ``Precision`` (fixed at construction) and its processes (``LocalProcesses`` or a
``ProcessGroup``) by composition. ``SingleDeviceStrategy`` trains on one device.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
from abc import ABC, abstractmethod
from typing import Any, Callable, ContextManager, cast

import torch

from .support import apply_to_tensors
from .checkpoint_format import CheckpointFormat, OneFileFormat
from .checkpoint_io import atomic_save, safe_load
from .driver import Driver
from .precision import Precision
from .process_group import REDUCE_OPS, LocalProcesses, ProcessGroup

__all__ = ["REDUCE_OPS", "SingleDeviceStrategy", "Strategy"]


class Strategy(ABC):
    """Where tensors live and how gradients move; owns the run's ``Precision``.

    Args:
        precision: a ``Precision`` or a precision string (see ``Precision.from_string``), checked
            by ``check_precision`` now; it never changes afterwards (``with_precision`` makes a copy).
        processes: the job's processes and their collectives (default: this process alone).
    """


    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # a strategy that brings its own step contexts needs them entered, unless it declares otherwise
        own = cls.__dict__
        if ("forward_context" in own or "no_backward_sync" in own) and "has_step_contexts" not in own:
            cls.has_step_contexts = True  # type: ignore[assignment]

    def __init__(self, precision: Precision | str | None = None,
                 processes: LocalProcesses | ProcessGroup | None = None) -> None:
        owner = f"{type(self).__name__}(precision=...)"
        self._precision = Precision.from_string("32-true" if precision is None else precision, owner=owner)
        self._precision_given = precision is not None
        self.check_precision(self._precision)
        self.processes = processes if processes is not None else LocalProcesses()

    @property
    def precision(self) -> Precision:
        """The run's numerics, fixed when the strategy was built."""
        return self._precision

    def check_precision(self, precision: Precision) -> None:
        """Raise ``ValueError`` if this strategy cannot train in ``precision`` (every one is fine here)."""
        return None

    def with_precision(self, precision: Any, owner: str = "Trainer") -> "Strategy":
        """This strategy with ``precision`` (checked as the constructor checks it), as a new object:
        this one is never changed. Returns ``self`` when the precision is the same.

        Raises ``ValueError`` when the strategy was built with a different precision of its own.
        """
        new = Precision.from_string(precision, owner=f"{owner}(precision=...)")
        if new.name == self._precision.name:
            return self
        if self._precision_given:
            raise ValueError(
                f"{owner}(strategy={type(self).__name__}(precision={self._precision.name!r}), "
                f"precision={new.name!r}): two different precisions. Give it in one place: drop {owner}'s "
                f"precision= or the strategy's.")
        self.check_precision(new)
        copied = copy.deepcopy(self)
        copied._precision, copied._precision_given = new, True
        return copied

    # -- who and where ------------------------------------------------------------------
    @property
    @abstractmethod
    def root_device(self) -> torch.device: ...

    @property
    def world_size(self) -> int:
        return self.processes.world_size

    @property
    def global_rank(self) -> int:
        return self.processes.global_rank

    @property
    def local_rank(self) -> int:
        return self.processes.local_rank

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed_type(self) -> str:
        """How the processes share the work, as Accelerate names it (``DistributedType``'s value):
        "NO" here (one process); replicas answer "MULTI_CPU"/"MULTI_GPU", FSDP "FSDP", DeepSpeed "DEEPSPEED"."""
        return "NO"

    @property
    def timeout(self) -> datetime.timedelta | None:
        """How long a collective may wait before failing (None on one process)."""
        return self.processes.timeout

    #: how the Trainer starts ``requested_processes`` in a process no launcher started: "popen" runs the
    #: script again once per rank; "fork"/"spawn" start them from this interpreter and hand their results
    #: back (``ddp_fork``/``ddp_spawn``, trainer/engine/spawn.py)
    start_method: str = "popen"

    @property
    def needs_launch(self) -> bool:
        """Several processes were asked for in a process no launcher started: the Trainer must start
        them (``requested_processes`` of them) before anything else."""
        return self.processes.needs_launch

    @property
    def requested_processes(self) -> int:
        return self.processes.requested_processes

    # -- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        """Prepare the environment (devices, process groups) before any module is touched; nothing
        in a process that only launches the workers."""
        if self.processes.needs_launch:
            return
        self.processes.setup()
        self.precision.setup(self.root_device)

    def connect(self, *, gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm",
                accumulate_grad_batches: int = 1) -> None:
        """Take the loop's settings that the strategy's own engine must carry (DeepSpeed writes them
        into its config). Nothing to do by default."""
        return None

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
        return self.setup_module(module), cast(Callable[..., Any], module.training_step)  # a TrainModule's method

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Move optimizer state (e.g. Adam moments loaded from elsewhere) to the device."""
        device = self.root_device
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device)
        return optimizer

    def prepare(self, models: list[torch.nn.Module],
                optimizers: list[torch.optim.Optimizer]) -> tuple[list[torch.nn.Module], list[torch.optim.Optimizer], Driver]:
        """Prepare ``models`` and the ``optimizers`` over their parameters, given together (either list may
        be empty), and return them with the ``Driver`` the step engine steps them with.

        Here each model goes through ``setup_module`` and each optimizer through ``setup_optimizer``; an
        optimizer built before its model was prepared is pointed at the prepared parameters (FSDP2
        shards them in place, as new objects). A strategy that must see a model and its optimizer
        together (DeepSpeed builds one engine over both) overrides this.
        """
        before: dict[int, torch.nn.Parameter] = {}  # id of each parameter -> the prepared one
        prepared = []
        for model in models:
            names = {id(p): n for n, p in model.named_parameters()}
            ready = self.setup_module(model)
            after = dict(self.unwrap_module(ready).named_parameters())
            before.update({pid: after[n] for pid, n in names.items() if n in after and after[n] is not None})
            prepared.append(ready)
        if before:
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["params"] = [before.get(id(p), p) for p in group["params"]]
        return prepared, [self.setup_optimizer(opt) for opt in optimizers], self.driver()

    def driver(self) -> Driver:
        """What the step engine drives for the models and optimizers this strategy prepared (see
        strategies/driver.py); one that needs no prepared object works before anything is prepared."""
        return Driver(self._precision)

    def unwrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def batch_to_device(self, batch: Any) -> Any:
        device = self.root_device
        if device.type == "cpu" and self._precision.param_dtype is None and _flat_on_cpu(batch):
            return batch  # nothing to move or convert: skip rebuilding the batch
        non_blocking = device.type == "cuda"
        batch = apply_to_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))
        return self.precision.convert_input(batch)

    # -- the training step --------------------------------------------------------------
    @property
    def has_step_contexts(self) -> bool:
        """Whether ``forward_context`` or ``no_backward_sync`` do anything; when False the loop calls
        ``training_step`` without entering them. A subclass overriding either is taken to need them
        (True) unless it declares ``has_step_contexts`` itself."""
        return self.precision.autocast_dtype is not None

    def forward_context(self) -> ContextManager:
        return self.precision.forward_context()

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Manual optimization: make these gradients the mean over processes (the backward did not
        run through a wrapper that syncs). Nothing to do on one process."""
        return None

    def no_backward_sync(self, module: torch.nn.Module) -> ContextManager:
        """Context for micro-steps that do not step the optimizer: gradients must not be
        all-reduced there. Nothing to skip on one device."""
        return contextlib.nullcontext()

    #: What this strategy cannot do, by feature, with the reason in words (a feature not here: it can):
    #: "oom_split" (Trainer(oom_split=True): micro-batches run without any collective, gradients sync once per
    #: window), "accumulation_schedule" (GradientAccumulationScheduler: the micro-batches per step change between
    #: epochs), "adding_param_groups" (BaseFinetuning: parameter groups added to a running optimizer),
    #: "weight_averaging" (StochasticWeightAveraging / WeightAveraging: a full averaged copy beside the module),
    #: "parameter_averaging" (Accelerate's LocalSGD: the processes' parameters averaged every few steps),
    #: "module_backward" (a TrainModule overriding ``backward``: called in place of the driver's backward).
    refusals: dict[str, str] = {}
    FEATURES = frozenset({"oom_split", "accumulation_schedule", "adding_param_groups", "weight_averaging",
                          "parameter_averaging", "module_backward"})

    def refuse_unsupported(self, feature: str, asked: str, fix: str, warn: bool = False) -> bool:
        """When this strategy cannot do ``feature`` (one of ``FEATURES``): raise ``MisconfigurationException``
        naming ``asked`` (what the user's code asked for), this strategy, its reason and ``fix``; with
        ``warn=True`` say so in a warning instead and return False. Returns True when it can."""
        if feature not in self.FEATURES:
            raise ValueError(f"refuse_unsupported({feature!r}): expected one of {sorted(self.FEATURES)}.")
        reason = self.refusals.get(feature)
        if not reason:
            return True
        message = f"{asked} with {type(self).__name__}: {reason} {fix}"
        if warn:
            import warnings

            warnings.warn(message, UserWarning, stacklevel=3)
            return False
        from .exceptions import MisconfigurationException

        raise MisconfigurationException(message)

    def local_training_step(self, module: torch.nn.Module) -> Callable[..., Any]:
        """``training_step`` with no communication in its forward or backward."""
        return cast(Callable[..., Any], module.training_step)  # a TrainModule's method

    def all_reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average the locally accumulated gradients over processes (nothing to do on one)."""
        return None

    def force_backward_sync(self, module: torch.nn.Module) -> ContextManager:
        """Context in which backward all-reduces gradients even if the forward ran under
        ``no_backward_sync`` (Accelerate's ``trigger_sync_in_backward``). Nothing to do on one device."""
        return contextlib.nullcontext()

    # -- collectives (through the processes; identities on one) ------------------------------
    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        return self.processes.reduce(tensor, op)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.processes.all_gather(tensor)

    def barrier(self, name: str | None = None) -> None:
        self.processes.barrier(name)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` from every process, in rank order."""
        return self.processes.all_gather_object(obj)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.processes.broadcast(obj, src)

    def teardown(self) -> None:
        self.processes.teardown()

    def explain_failure(self, err: BaseException) -> BaseException | None:
        """A clearer error for ``err`` when it is a failed collective (another rank died or hung), else None."""
        return self.processes.explain_failure(err)

    # -- checkpoints -----------------------------------------------------------------------------
    @functools.cached_property
    def checkpoint_format(self) -> CheckpointFormat:
        """How this strategy's checkpoints are written, staged, read, verified and merged
        (strategies/checkpoint_format.py): here one file, written by rank zero through
        ``save_checkpoint``. A strategy with a format of its own returns it here (one object per strategy)."""
        return OneFileFormat(self)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str) -> None:
        """Write a full one-file checkpoint atomically (rank zero writes; others wait)."""
        if self.is_global_zero:
            atomic_save(checkpoint, path)
        self.barrier("save_checkpoint")

    def load_checkpoint(self, path: str) -> Any:
        return safe_load(path, map_location="cpu")

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The module's full, unsharded state dict (on rank zero at least)."""
        return module.state_dict()

    def local_state_bytes(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of parameters (and optimizer state) this process holds."""
        total = sum(p.numel() * p.element_size() for p in module.parameters())
        if optimizer is not None:
            for state in optimizer.state.values():
                total += sum(v.numel() * v.element_size() for k, v in state.items()
                             if isinstance(v, torch.Tensor) and k != "step")
        return total

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
