"""``DDPStrategy``: one process per device, gradients all-reduced by DistributedDataParallel."""

from __future__ import annotations

import contextlib
import datetime
import functools
from typing import Any, Callable, ContextManager, Iterator, cast

import torch
import torch.distributed as dist

from .environment import ClusterEnvironment
from .precision import Precision
from .process_group import DDP_MODULES, ProcessGroup
from .strategy import Strategy


class StepForward(torch.nn.Module):
    """Routes ``training_step`` through DDP's ``forward``, which is what arms the gradient
    all-reduce for the backward that follows (DeepSpeed's engine wraps the module in it too)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)


class DDPStrategy(Strategy):
    """Distributed data parallel: each process holds a full replica and trains on its shard of
    the data; gradients are averaged across processes during backward.

    World size and ranks come from the environment (torchrun, ``trainer launch``, SLURM).

    Args:
        device_kind: "cpu" (gloo) or "cuda" (nccl: one GPU per process, picked by local rank).
        precision: see ``Precision``.
        timeout: how long a collective may wait before failing (a hang becomes an error).
            Seconds or a timedelta; default: ``collective_timeout`` from ``trainer launch`` (its
            flag or the config file), else 600 s (10 minutes). A dead or hung rank then ends
            the job with an error naming it (see failures.py).
        find_unused_parameters: set when some parameters get no gradient in a step.
        static_graph: the set of used parameters never changes (lets DDP optimise).
        bucket_cap_mb: size in MiB of the buckets DDP all-reduces gradients in (torch's default, 25, when None).
        gradient_as_bucket_view: gradients are views into DDP's buckets (saves a copy and memory).
        process_group_backend: override "nccl"/"gloo".
        environment: the cluster environment (ranks, addresses); detected from the launcher by default.
        requested_processes: processes to start when no launcher started this one
            (``Trainer(strategy="ddp", devices=2)`` in a plain ``python train.py``).
        start_method: how those processes start. "popen" (default): the script runs again once per rank.
            "fork" or "spawn" (``strategy="ddp_fork"``/``"ddp_notebook"``/``"ddp_spawn"``): the ranks start
            from inside this interpreter and their results come back to it (trainer/engine/spawn.py).
    """


    @property
    def distributed_type(self) -> str:
        """Replicas: Accelerate's MULTI_GPU / MULTI_CPU by device (NO on one process)."""
        if self.world_size == 1:
            return "NO"
        return "MULTI_GPU" if self.root_device.type == "cuda" else "MULTI_CPU"
    processes: ProcessGroup  # always a process group (made in __init__)

    def __init__(self, device_kind: str = "cpu", precision: Precision | str | None = None,
                 timeout: datetime.timedelta | float | None = None,
                 find_unused_parameters: bool = False, static_graph: bool = False,
                 process_group_backend: str | None = None, environment: ClusterEnvironment | None = None,
                 requested_processes: int = 1, bucket_cap_mb: float | None = None,
                 gradient_as_bucket_view: bool = False, start_method: str = "popen") -> None:
        if start_method not in ("popen", "fork", "spawn"):
            raise ValueError(f"DDPStrategy(start_method={start_method!r}): expected 'popen' (re-run the script once "
                             "per rank), 'fork' or 'spawn' (start the ranks from inside this interpreter).")
        if bucket_cap_mb is not None and (isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float))
                                          or not bucket_cap_mb > 0):
            raise ValueError(f"DDPStrategy(bucket_cap_mb={bucket_cap_mb!r}): expected a size in MiB > 0 (torch's "
                             "default is 25), or None for torch's default.")
        for name, flag in (("static_graph", static_graph), ("gradient_as_bucket_view", gradient_as_bucket_view),
                           ("find_unused_parameters", find_unused_parameters)):
            if not isinstance(flag, bool):
                raise TypeError(f"DDPStrategy({name}={flag!r}): expected True or False.")
        super().__init__(precision, ProcessGroup(device_kind, timeout, process_group_backend, environment,
                                                 requested_processes, owner="DDPStrategy"))
        self.device_kind = device_kind
        self.find_unused_parameters, self.static_graph = find_unused_parameters, static_graph
        self.bucket_cap_mb, self.gradient_as_bucket_view = bucket_cap_mb, gradient_as_bucket_view
        self.start_method = start_method
        self._wrapped: dict[Any, tuple[torch.nn.Module, Callable]] = {}

    @property
    def root_device(self) -> torch.device:
        return self.processes.root_device

    @property
    def has_step_contexts(self) -> bool:
        return True  # no_backward_sync skips DDP's all-reduce

    # -- modules ---------------------------------------------------------------------------------
    def _ddp(self, module: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel:
        device_ids = [self.root_device.index] if self.device_kind == "cuda" else None
        bucket: dict[str, Any] = {} if self.bucket_cap_mb is None else {"bucket_cap_mb": self.bucket_cap_mb}
        # DDP's constructor broadcasts parameters and buffers from rank 0: every replica starts equal
        ddp = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters,
            static_graph=self.static_graph, gradient_as_bucket_view=self.gradient_as_bucket_view, **bucket)
        DDP_MODULES.add(ddp)
        return ddp

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module
        return self._ddp(self.precision.convert_module(module.to(self.root_device)))

    def setup_trainer_module(self, module: torch.nn.Module, manual: bool = False) -> tuple[torch.nn.Module, Callable]:
        key = (id(module), manual)
        if key not in self._wrapped:
            model = self._ddp(StepForward(self.precision.convert_module(module.to(self.root_device))))
            # manual optimization runs any number of backward calls per step: DDP's reducer (armed by its
            # forward for exactly one) stays idle, and manual_backward averages the gradients itself
            step = cast(Callable[..., Any], module.training_step) if manual else functools.partial(model, "training_step")
            self._wrapped[key] = (model, step)
        return self._wrapped[key]

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """One all-reduce of the flattened gradients, divided by the world size (manual optimization)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads or self.world_size == 1:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(averaged)

    def unwrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        return module.module if isinstance(module, StepForward) else module

    def no_backward_sync(self, module: torch.nn.Module) -> ContextManager:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module.no_sync()
        return super().no_backward_sync(module)

    def local_training_step(self, module: torch.nn.Module) -> Callable:
        return cast(Callable[..., Any], module.training_step)  # around DDP's wrapper: no reducer, no buffer broadcast

    def all_reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """One all-reduce of every gradient, flattened (a parameter without one counts as zeros), then
        rank zero's buffers to every rank: what DDP's backward and forward would have done."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not params or self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, synced in zip(params, torch._utils._unflatten_dense_tensors(flat, grads)):
            if p.grad is None:
                p.grad = synced
            else:
                p.grad.copy_(synced)
        for module in self._wrapped.values():
            for buffer in module[0].buffers():
                dist.broadcast(buffer, src=0)

    @contextlib.contextmanager
    def force_backward_sync(self, module: torch.nn.Module) -> Iterator[None]:
        if not isinstance(module, torch.nn.parallel.DistributedDataParallel):
            yield
            return
        # the forward under no_sync() left the reducer unarmed: arm it for this backward
        before = module.require_backward_grad_sync
        module.require_backward_grad_sync = True
        module.require_forward_param_sync = True
        module.reducer.prepare_for_backward([])
        try:
            yield
        finally:
            module.require_backward_grad_sync = before

    def teardown(self) -> None:
        self._wrapped.clear()
        super().teardown()

    def __repr__(self) -> str:
        return (f"DDPStrategy({self.processes.backend}, rank {self.global_rank}/{self.world_size}, "
                f"precision={self.precision.name!r})")
