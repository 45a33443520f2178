"""Notes added to an error raised inside ``training_step`` / ``validation_step``: what the batch
was, and for torch's device-mismatch error, where each tensor lives and the fix."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

import torch

_DTYPE_MISMATCH = ("must have the same dtype", "expected scalar type", "to have the same dtype", "Found dtype",
                   "and bias type", "and weight type", "expected both vectors to have same dtype")
_DEVICE_MISMATCH = ("Expected all tensors to be on the same device", "is not on the expected device",
                    "Expected object of device type", "should be the same device", "and weight type",
                    "found at least two devices")


def add_step_note(err: BaseException, module: torch.nn.Module, batch: Any, method: str, batch_idx: int) -> None:
    """Add one note to ``err`` (once): the batch's structure, and for a device mismatch the devices."""
    if getattr(err, "_trainer_step_note", False) or not hasattr(err, "add_note"):
        return
    err._trainer_step_note = True  # type: ignore[attr-defined]
    note = dtype_note(module, batch, method, batch_idx) if isinstance(err, RuntimeError) and any(
        m in str(err) for m in _DTYPE_MISMATCH) else None
    if not note and isinstance(err, RuntimeError) and any(m in str(err) for m in _DEVICE_MISMATCH):
        note = device_note(module, batch, method, batch_idx)
    elif not note and isinstance(err, (TypeError, ValueError, IndexError, KeyError, AttributeError)):
        note = f"{type(module).__name__}.{method} got batch_idx {batch_idx} with batch = {describe_batch(batch)}."
    if note and hasattr(err, "add_note"):  # BaseException.add_note: Python 3.11+
        err.add_note(note)


def dtype_note(module: torch.nn.Module, batch: Any, method: str, batch_idx: int) -> str | None:
    """A batch of floating-point tensors of another dtype than the module's parameters (float64 from numpy
    meeting float32 weights, the common case): which tensors, and the fix. None when that is not it."""
    params = sorted({str(p.dtype).replace("torch.", "") for p in module.parameters() if p.is_floating_point()})
    other = [(path, t) for path, t in _tensors(batch, "batch")
             if t.is_floating_point() and str(t.dtype).replace("torch.", "") not in params]
    if not params or not other:
        return None
    held = ", ".join(f"{path}: {str(t.dtype).replace('torch.', '')}" for path, t in other[:4])
    want = params[0] if len(params) == 1 else " / ".join(params)
    return (f"A dtype mismatch in {type(module).__name__}.{method} (batch_idx {batch_idx}): the module's parameters "
            f"are {want}, the batch holds {held}. Make the data {want} where it is built (numpy arrays are float64: "
            f"torch.from_numpy(a).float(), or torch.tensor(a, dtype=torch.{want})), or convert it in the step with "
            "x.to(self.dtype). The loop moves batches to the module's device but keeps their dtype.")


def device_note(module: torch.nn.Module, batch: Any, method: str, batch_idx: int) -> str:
    devices = sorted({str(p.device) for p in module.parameters()} | {str(b.device) for b in module.buffers()})
    where = ", ".join(f"{path} on {t.device}" for path, t in _tensors(batch, "batch")) or "no tensor"
    return (f"A device mismatch in {type(module).__name__}.{method} (batch_idx {batch_idx}): the module's "
            f"parameters are on {', '.join(devices) or 'no device'}; the batch holds {where}. The loop moves the "
            "batch to the module's device, so a tensor on another device was made inside the step: create it "
            "with device=self.device (e.g. torch.zeros(n, device=self.device)), or return it from the dataloader.")


def describe_batch(batch: Any, limit: int = 6) -> str:
    """A short description: the container's type and each leaf's type (tensors with shape, dtype, device)."""
    leaves = list(_leaves(batch, "batch"))
    shown = []
    for path, value in leaves[:limit]:
        if isinstance(value, torch.Tensor):
            shown.append(f"{path}: Tensor{tuple(value.shape)} {str(value.dtype).replace('torch.', '')} "
                         f"on {value.device}")
        else:
            shown.append(f"{path}: {type(value).__name__} {value!r:.40}")
    more = f", ... ({len(leaves) - limit} more)" if len(leaves) > limit else ""
    size = f" of {len(batch)}" if isinstance(batch, (list, tuple, Mapping)) else ""
    return f"a {type(batch).__name__}{size} ({'; '.join(shown)}{more})"


def _leaves(data: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping):
        for k, v in data.items():
            yield from _leaves(v, f"{path}[{k!r}]")
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            yield from _leaves(v, f"{path}[{i}]")
    elif dataclasses.is_dataclass(data) and not isinstance(data, type):
        for f in dataclasses.fields(data):
            yield from _leaves(getattr(data, f.name), f"{path}.{f.name}")
    else:
        yield path, data


def _tensors(data: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    return ((p, v) for p, v in _leaves(data, path) if isinstance(v, torch.Tensor))
