"""Collective operations on tensors and nests of tensors (dicts, lists, tuples), under
Accelerate's names and signatures, for use with or without an ``Accelerator``.

They act on the default process group when one is initialised (every process must call them
in the same order), and return their input unchanged on a single process.
"""

from __future__ import annotations

import enum
from typing import Any

import torch
import torch.distributed as dist

from trainer.strategies.support import apply_to_tensors

_REDUCTIONS = ("sum", "mean", "max", "min")


class DistributedType(str, enum.Enum):
    """How the processes of a job share the work (``accelerator.distributed_type``).

    The members this framework produces are NO, MULTI_CPU, MULTI_GPU, FSDP and DEEPSPEED; the
    others exist so code that compares against Accelerate's names keeps running.
    """

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    FSDP = "FSDP"
    DEEPSPEED = "DEEPSPEED"
    MULTI_XPU = "MULTI_XPU"
    MULTI_NPU = "MULTI_NPU"
    MULTI_MLU = "MULTI_MLU"
    MULTI_SDAA = "MULTI_SDAA"
    MULTI_MUSA = "MULTI_MUSA"
    MULTI_HPU = "MULTI_HPU"
    MULTI_NEURON = "MULTI_NEURON"
    XLA = "XLA"
    MEGATRON_LM = "MEGATRON_LM"


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(tensor: Any) -> Any:
    """Concatenate every process's tensors along dim 0 (0-d tensors are stacked), in rank order.

    Example:
        >>> gather(torch.tensor([1.0, 2.0]))  # on one process: unchanged
        tensor([1., 2.])
    """
    world = _world()
    if world == 1:
        return tensor

    def one(t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        return torch.stack(parts) if t.dim() == 0 else torch.cat(parts)

    return apply_to_tensors(tensor, one)


def gather_object(obj: Any) -> Any:
    """Every process's ``obj`` (a list: the lists are concatenated, in rank order; anything else:
    one element per process). Unchanged on one process."""
    world = _world()
    if world == 1:
        return obj
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    if all(isinstance(o, (list, tuple)) for o in out):
        return [x for part in out for x in part]
    return out


def broadcast(tensor: Any, from_process: int = 0) -> Any:
    """Every process gets ``from_process``'s values (same shapes on every process; in place).

    Args:
        tensor: a tensor, or tensors nested in lists, tuples and dicts.
        from_process: the rank whose values are sent.
    """
    if _world() == 1:
        return tensor

    def one(t: torch.Tensor) -> torch.Tensor:
        dist.broadcast(t, src=from_process)
        return t

    return apply_to_tensors(tensor, one)


def broadcast_object_list(objects: list[Any], from_process: int = 0) -> list[Any]:
    """``from_process``'s picklable objects, in place of every process's list."""
    if _world() > 1:
        dist.broadcast_object_list(objects, src=from_process)
    return objects


def pad_across_processes(tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
    """Pad each tensor along ``dim`` with ``pad_index`` to the largest size any process has, so the
    result can be gathered. The tensors must have the same number of dimensions on every process.

    Args:
        tensor: a tensor, or tensors nested in lists, tuples and dicts.
        dim: the dimension to pad.
        pad_index: the value padded in.
        pad_first: pad at the start instead of the end.
    """
    world = _world()
    if world == 1:
        return tensor

    def one(t: torch.Tensor) -> torch.Tensor:
        if dim >= t.dim() or dim < -t.dim():
            return t
        d = dim % t.dim()
        size = torch.tensor([t.shape[d]], device=t.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        if longest == t.shape[d]:
            return t
        shape = list(t.shape)
        shape[d] = longest
        out = t.new_full(shape, pad_index)
        index = [slice(None)] * t.dim()
        index[d] = slice(longest - t.shape[d], longest) if pad_first else slice(0, t.shape[d])
        out[tuple(index)] = t
        return out

    return apply_to_tensors(tensor, one)


def reduce(tensor: Any, reduction: str = "mean", scale: float = 1.0) -> Any:
    """Reduce each tensor over the processes ("sum", "mean", "max" or "min"), times ``scale``.

    Args:
        tensor: a tensor, or tensors nested in lists, tuples and dicts.
        reduction: "sum", "mean", "max" or "min".
        scale: a factor applied after the reduction.

    Example:
        >>> reduce(torch.tensor([2.0]), "sum", scale=0.5)  # on one process
        tensor([1.])
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduce(reduction={reduction!r}): expected one of {', '.join(map(repr, _REDUCTIONS))}.")
    world = _world()

    def one(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        if world > 1:
            op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                  "min": dist.ReduceOp.MIN}[reduction]
            dist.all_reduce(out, op=op)
            if reduction == "mean":
                out = out / world
        return out * scale if scale != 1.0 else out

    return apply_to_tensors(tensor, one)


__all__ = ["DistributedType", "broadcast", "broadcast_object_list", "gather", "gather_object",
           "pad_across_processes", "reduce"]
