"""``FSDPStrategy``: fully sharded data parallel on FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each process holds 1/n of every parameter, gradient and optimizer state; parameters are
all-gathered per wrapped block for its forward and backward and freed after, gradients are
reduce-scattered. Process group, ranks and collectives: a ``ProcessGroup`` (as DDP's).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from typing import Any, Callable, ContextManager, Iterable, cast

import torch

from .driver import Driver
from .checkpoint_format import CheckpointFormat, DCPFormat
from .environment import ClusterEnvironment
from .precision import Precision
from .process_group import ProcessGroup
from .strategy import Strategy

# Which precisions FSDP's own MixedPrecisionPolicy serves (params cast for compute, reduced in fp32).
_MP_DTYPES = {"bf16-mixed": torch.bfloat16}

# The option names of the config file's ``fsdp`` section and FullyShardedDataParallelPlugin (Accelerate's).
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
AUTO_WRAP_POLICIES = ("transformer", "size", "none")


class FSDPStrategy(Strategy):
    """Shard parameters, gradients and optimizer state across processes (FSDP2).

    Args:
        device_kind: "cpu" (gloo) or "cuda" (nccl).
        precision: "32-true", "bf16-mixed" (FSDP's MixedPrecisionPolicy: bf16 compute and all-gather,
            fp32 gradient reduction and fp32 sharded master weights; no autocast) or "bf16-true".
        auto_wrap_policy: which submodules get their own ``fully_shard`` (their parameters are
            gathered only while they run): a set of module classes (e.g. ``{TransformerBlock}``), an
            int (every submodule with at least this many parameters of its own subtree, innermost
            first), or a callable ``(module) -> bool``. The root module is always sharded.
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory.
        activation_checkpointing: module classes (or a predicate) whose activations are recomputed in backward.
        reshard_after_forward: free gathered parameters after forward (less memory, one more gather).
        sharding: "full" (shard over all processes) or "hybrid" (HSDP: shard within a machine,
            replicate across machines; a 2-D mesh of num_machines x processes per machine).
        timeout: collectives' timeout (as for DDPStrategy).
        process_group_backend, environment, requested_processes: as for DDPStrategy.

    Example:
        >>> FSDPStrategy(auto_wrap_policy={torch.nn.TransformerEncoderLayer})  # doctest: +SKIP
    """

    distributed_type = "FSDP"  # Accelerate's name (a property on the base)
    processes: ProcessGroup  # always a process group (made in __init__)

    def __init__(self, device_kind: str = "cpu", precision: Precision | str | None = None,
                 auto_wrap_policy: set[type] | int | Callable[[torch.nn.Module], bool] | None = None,
                 cpu_offload: bool = False, activation_checkpointing: Any = None,
                 reshard_after_forward: bool = True, sharding: str = "full",
                 timeout: datetime.timedelta | float | None = None,
                 process_group_backend: str | None = None, environment: ClusterEnvironment | None = None,
                 requested_processes: int = 1) -> None:
        super().__init__(precision, ProcessGroup(device_kind, timeout, process_group_backend, environment,
                                                 requested_processes, owner="FSDPStrategy"))
        self.device_kind = device_kind
        if sharding not in ("full", "hybrid"):
            raise ValueError(f"FSDPStrategy(sharding={sharding!r}): expected 'full' or 'hybrid' (shard within a "
                             "machine, replicate across machines).")
        if not (auto_wrap_policy is None or callable(auto_wrap_policy) or isinstance(auto_wrap_policy, (set, list,
                tuple, frozenset)) or (isinstance(auto_wrap_policy, int) and auto_wrap_policy > 0)):
            raise ValueError(f"FSDPStrategy(auto_wrap_policy={auto_wrap_policy!r}): expected a set of module classes, "
                             "a positive minimum parameter count, or a callable (module) -> bool.")
        self.auto_wrap_policy, self.cpu_offload = auto_wrap_policy, cpu_offload
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward, self.sharding = reshard_after_forward, sharding
        self._wrapped: dict[int, tuple[torch.nn.Module, Callable]] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], **kwargs: Any) -> "FSDPStrategy":
        """Build from the config file's ``fsdp`` section (the names Accelerate users know):
        sharding_strategy FULL_SHARD / SHARD_GRAD_OP (keep gathered parameters between forward and
        backward) / HYBRID_SHARD; cpu_offload; auto_wrap_policy "transformer" (classes named in
        transformer_layer_cls, comma-separated) / "size" (min_num_params) / "none";
        activation_checkpointing (of the wrapped blocks)."""
        sharding = options.get("sharding_strategy", "FULL_SHARD")
        if sharding == "NO_SHARD":
            raise ValueError("FSDP sharding_strategy NO_SHARD keeps a full replica on every process: that is DDP. Use "
                             "strategy='ddp' (or sharding_strategy FULL_SHARD / SHARD_GRAD_OP / HYBRID_SHARD).")
        policy_kind = options.get("auto_wrap_policy", "size")
        names = {n.strip() for n in str(options.get("transformer_layer_cls") or "").split(",") if n.strip()}
        policy: Any = None
        if policy_kind == "transformer":
            policy = _ByClassName(names)
        elif policy_kind == "size":
            policy = int(options.get("min_num_params", 100_000_000))
        checkpointing = _ByClassName(names) if options.get("activation_checkpointing") and names else None
        return cls(auto_wrap_policy=policy, cpu_offload=bool(options.get("cpu_offload", False)),
                   activation_checkpointing=checkpointing, reshard_after_forward=sharding != "SHARD_GRAD_OP",
                   sharding="hybrid" if sharding == "HYBRID_SHARD" else "full", **kwargs)

    @property
    def root_device(self) -> torch.device:
        return self.processes.root_device

    def check_precision(self, precision: Precision) -> None:
        if precision.name == "16-mixed":
            raise ValueError("FSDPStrategy(precision='16-mixed'): fp16 with a loss scaler is not supported with "
                             "sharded gradients here. Use precision='bf16-mixed' (FSDP's mixed precision policy, no "
                             "scaler needed) or '32-true'.")

    # -- set-up ------------------------------------------------------------------------------------
    def _mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        world = self.world_size
        if self.sharding == "hybrid":
            per_machine = self.processes.environment.local_world_size
            if world % per_machine:
                raise ValueError(f"FSDPStrategy(sharding='hybrid'): {world} processes do not split into machines of "
                                 f"{per_machine} (LOCAL_WORLD_SIZE).")
            return init_device_mesh(self.device_kind, (world // per_machine, per_machine),
                                    mesh_dim_names=("replicate", "shard"))
        return init_device_mesh(self.device_kind, (world,), mesh_dim_names=("shard",))

    def _wrap_targets(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        policy = self.auto_wrap_policy
        if policy is None:
            return []
        if isinstance(policy, int):
            big = [m for m in module.modules() if m is not module and sum(p.numel() for p in m.parameters()) >= policy]
            return [m for m in big if not any(_contains(m, other) for other in big)]  # the innermost ones
        if callable(policy) and not isinstance(policy, type):
            return [sub for sub in module.modules() if sub is not module and policy(sub)]
        classes = (policy,) if isinstance(policy, type) else tuple(policy)  # one class, or a set of them
        return [sub for sub in module.modules() if sub is not module and isinstance(sub, classes)]

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

        if isinstance(module, FSDPModule):
            return module
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"FSDPStrategy: {type(module).__name__} has no trainable parameters to shard. Build the "
                             "layers in __init__ or configure_model(), or use strategy='ddp' for a model without "
                             "parameters.")
        on_meta = any(p.is_meta for p in module.parameters())
        if not (self.cpu_offload or on_meta):
            module = module.to(self.root_device)
        if self.precision.param_dtype is not None:  # bf16-true: the sharded weights themselves are bf16
            module = module.to(self.precision.param_dtype)
        if self.activation_checkpointing:
            _checkpoint_activations(module, self.activation_checkpointing)
        options: dict[str, Any] = {"mesh": self._mesh(), "reshard_after_forward": self.reshard_after_forward}
        dtype = _MP_DTYPES.get(self.precision.name)
        if dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if self.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy(pin_memory=self.device_kind == "cuda")
        for sub in self._wrap_targets(module):
            fully_shard(sub, **options)
        fully_shard(module, **options)
        if on_meta:
            _materialize(module, torch.device("cpu") if self.cpu_offload else self.root_device)
        # the loop calls training_step (not forward): gather the root's own parameters around it too
        from torch.distributed.fsdp import register_fsdp_forward_method

        for name in ("training_step", "validation_step", "test_step", "predict_step"):
            if callable(getattr(module, name, None)):
                register_fsdp_forward_method(module, name)
        return module

    def module_init_context(self) -> ContextManager:
        return torch.device("meta")  # configure_model's layers take no memory until they are sharded

    def setup_trainer_module(self, module: torch.nn.Module, manual: bool = False) -> tuple[torch.nn.Module, Callable]:
        key = id(module)
        if key not in self._wrapped:
            # the module itself is sharded in place: training_step runs its forward, which gathers
            model = self.setup_module(module)
            self._wrapped[key] = (model, cast(Callable[..., Any], model.training_step))
        return self._wrapped[key]

    def unwrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module  # FSDP2 shards in place: the module is the user's own object

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        return None  # FSDP's own backward hooks reduce-scatter every backward, manual or not

    # -- the step -----------------------------------------------------------------------------------
    @property
    def has_step_contexts(self) -> bool:
        return True  # no_backward_sync holds the reduce-scatter back

    def forward_context(self) -> ContextManager:
        if self.precision.name in _MP_DTYPES:
            return contextlib.nullcontext()  # FSDP's MixedPrecisionPolicy casts; no autocast on top
        return super().forward_context()

    refusals = {
        "parameter_averaging": "each process holds only its shard of the parameters, so there is no full set of "
                               "parameters on each process to average.",
        "oom_split": "FSDP gathers parameters in every forward and backward (collectives), so a rank that retries a "
                     "micro-batch in pieces would leave the others waiting in a different collective.",
        "weight_averaging": "each process holds only its shard of the parameters, and the averaged copy would be a "
                            "full unsharded module on every process (or shards that the averaging and the swap for "
                            "validation would have to gather).",
    }

    @contextlib.contextmanager
    def no_backward_sync(self, module: torch.nn.Module) -> Any:
        """Accumulate unsharded gradients locally; reduce-scatter only on the window's last backward."""
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(module, FSDPModule):
            yield
            return
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    def driver(self) -> Driver:
        return FSDPDriver(self.precision)

    # -- checkpoints: torch.distributed.checkpoint, each rank writes its own shards ---------------------
    @functools.cached_property
    def checkpoint_format(self) -> CheckpointFormat:
        """DCP shards (``DCPFormat``, strategies/checkpoint_format.py): every rank writes its own, no gather."""
        return DCPFormat(self)

    # -- state ----------------------------------------------------------------------------------------
    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The unsharded weights, gathered to CPU on rank zero ({} elsewhere)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast("dict[str, torch.Tensor]", state)  # a module's weights: tensors

    def local_state_bytes(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of parameters (and optimizer state) this process holds: the local shards."""
        def local(t: torch.Tensor) -> torch.Tensor:
            return t.to_local() if hasattr(t, "to_local") else t

        total = sum(local(p).numel() * local(p).element_size() for p in module.parameters())
        if optimizer is not None:
            for state in optimizer.state.values():
                total += sum(local(v).numel() * local(v).element_size() for k, v in state.items()
                             if isinstance(v, torch.Tensor) and k != "step")
        return total

    def teardown(self) -> None:
        self._wrapped.clear()
        super().teardown()

    def __repr__(self) -> str:
        return (f"FSDPStrategy({self.processes.backend}, rank {self.global_rank}/{self.world_size}, sharding={self.sharding!r}, "
                f"precision={self.precision.name!r})")


def _contains(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return outer is not inner and any(m is inner for m in outer.modules())


def _materialize(module: torch.nn.Module, device: torch.device) -> None:
    """Allocate the local shards of parameters built on the meta device and initialise them."""
    module.to_empty(device=device)
    with torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    missing = [n for n, sub in module.named_modules() if any(True for _ in sub.parameters(recurse=False))
               and not callable(getattr(sub, "reset_parameters", None))]
    if missing:
        raise ValueError(f"FSDPStrategy: parameters built on the meta device in configure_model() have no "
                         f"reset_parameters() to initialise them, in: {', '.join(missing[:5])}. Give those modules a "
                         "reset_parameters(), or build them in __init__.")


class _ByClassName:
    """A wrap policy: modules whose class name is one of ``names`` (from a config file)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def __call__(self, module: torch.nn.Module) -> bool:
        return type(module).__name__ in self.names


def _checkpoint_activations(module: torch.nn.Module, which: Any) -> None:
    """Recompute the activations of the chosen blocks (a set of classes, or a predicate) in backward."""
    import torch.utils.checkpoint as checkpoint

    chosen = which if callable(which) and not isinstance(which, (set, tuple, list, frozenset)) \
        else (lambda m, classes=tuple(which): isinstance(m, classes))
    for sub in module.modules():
        if sub is not module and chosen(sub) and not getattr(sub, "_trainer_checkpointed", False):
            forward = sub.forward

            def recomputed(*args: Any, _forward: Callable = forward, **kwargs: Any) -> Any:
                return checkpoint.checkpoint(_forward, *args, use_reentrant=False, **kwargs)

            sub.forward = recomputed
            sub._trainer_checkpointed = True  # type: ignore[assignment]  # our marker; mypy types Module attributes as Tensor | Module


class FSDPDriver(Driver):
    """The default driver, with the gradient norm taken over every shard."""

    def clip_norm(self, parameters: Iterable[torch.nn.Parameter], max_norm: float,
                  norm_type: float = 2.0) -> torch.Tensor:
        """The norm over every shard (an all-reduce inside DTensor's norm), then clipping in place."""
        params = [p for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], norm_type)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm
