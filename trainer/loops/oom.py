"""Out-of-memory recovery: recognise the error, free memory, split a batch along its first dimension.

Used by ``Trainer(oom_split=True)`` (fit_loop.py trains the pieces as extra micro-batches of the
same accumulation window) and by ``trainer.utils.find_executable_batch_size``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Mapping
from typing import Any, cast

import torch

from trainer.strategies.support import first_tensor

log = logging.getLogger("trainer")

# RuntimeError messages that mean "out of memory" on backends or versions that do not raise
# torch.OutOfMemoryError (the CPU allocator, cuDNN's workspace, older CUDA builds).
_OOM_MESSAGES = ("out of memory", "DefaultCPUAllocator: can't allocate memory",
                 "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED", "CUDNN_STATUS_ALLOC_FAILED")


def is_oom_error(err: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` (also ``torch.cuda.OutOfMemoryError``) and the
    RuntimeErrors some allocators raise instead."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(err, oom_type):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _OOM_MESSAGES)


def free_memory() -> None:
    """Collect garbage and hand cached device blocks back (after the failed step's tensors are gone)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for name in ("xpu", "mps"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            backend.empty_cache()


class UnsplittableBatch(TypeError):
    """The batch holds no tensor to split, or a tensor whose first dimension is not the batch size."""


def split_batch(batch: Any, size: int, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of ``batch`` (of ``size`` samples): every tensor nested in dicts, lists,
    tuples, namedtuples and dataclasses is sliced along its first dimension; 0-dim tensors and
    non-tensor leaves (ints, strings, None) are kept whole in every piece."""
    return _slice(batch, size, start, stop, "batch")


def _slice(data: Any, size: int, start: int, stop: int, path: str) -> Any:
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            return data
        if data.shape[0] != size:
            raise UnsplittableBatch(f"oom_split: cannot split the batch along its first dimension: {path} has "
                                    f"shape {tuple(data.shape)}, but the batch has {size} samples (the first "
                                    "tensor's first dimension). Put the batch dimension first in every tensor of "
                                    "the batch, or lower the dataloader's batch_size.")
        return data[start:stop]
    if isinstance(data, Mapping):
        items = {k: _slice(v, size, start, stop, f"{path}[{k!r}]") for k, v in data.items()}
        try:
            return cast(Any, type(data))(items)  # a Mapping subclass's own constructor
        except TypeError:
            return items
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(_slice(v, size, start, stop, f"{path}.{f}") for f, v in zip(data._fields, data)))
    if isinstance(data, (list, tuple)):
        return type(data)(_slice(v, size, start, stop, f"{path}[{i}]") for i, v in enumerate(data))
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: _slice(getattr(data, f.name), size, start, stop, f"{path}.{f.name}")
                   for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    return data


def memory_report(module: torch.nn.Module, device: torch.device) -> str:
    """The model's memory figures, for the error raised when even one sample does not fit."""
    params = list(module.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    text = (f"the model has {sum(p.numel() for p in params):,} parameters ({param_bytes / 2**20:.1f} MiB), "
            f"gradients {grad_bytes / 2**20:.1f} MiB")
    if device.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(device)
        text += (f"; {device}: {torch.cuda.memory_allocated(device) / 2**20:.0f} MiB allocated, peak "
                 f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free of "
                 f"{total / 2**20:.0f} MiB")
    return text


def pieces(size: int, piece: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``piece`` samples covering ``size`` samples."""
    return [(lo, min(lo + piece, size)) for lo in range(0, size, piece)]


class BatchSplitter:
    """``Trainer(oom_split=True)``: trains a micro-batch in pieces when it does not fit.

    ``run(batch, size, train_piece)`` calls ``train_piece(piece, piece_size)`` (forward + backward of
    one piece) for pieces of at most the remembered size; a piece that runs out of memory is halved
    (the first half gets the extra sample of an odd size) and retried, down to one sample. The
    pieces are extra micro-batches of the same window: each counts with its size, so the update is
    the unsplit one. Nothing here communicates: under DDP the pieces run without gradient sync and
    the loop syncs once per window, so a rank that splits never leaves the others in a collective.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device
        self.piece: int | None = None  # the largest piece size known to fit (None: nothing failed yet)
        self.backward_started = False   # set by the loop right before a piece's backward

    def run(self, batch: Any, size: int, train_piece: Any, window_has_grads: bool) -> Any:
        if self.piece is None or size <= self.piece:
            queue = [(0, size)]
        else:
            queue = pieces(size, self.piece)
        output, before = None, self.piece
        while queue:
            lo, hi = queue.pop(0)
            if self.piece is not None and hi - lo > self.piece:  # queued before the size was lowered
                queue[:0] = [(lo + a, lo + b) for a, b in pieces(hi - lo, self.piece)]
                continue
            piece = batch if (lo, hi) == (0, size) else split_batch(batch, size, lo, hi)
            self.backward_started = False
            try:
                output = train_piece(piece, hi - lo)
                window_has_grads = True
                continue
            except Exception as err:  # noqa: BLE001 - only out-of-memory errors are recovered
                if not is_oom_error(err):
                    raise
                in_backward = self.backward_started
            del piece
            if first_tensor(batch) is None:
                raise UnsplittableBatch(f"oom_split: a batch of type {type(batch).__name__} ran out of memory, and it "
                                        "holds no tensor to split along the batch dimension. Return tensors from "
                                        "the dataloader (a collate_fn), or lower its batch_size.")
            self._recover(in_backward, window_has_grads, hi - lo, size)
            half = (hi - lo + 1) // 2
            queue[:0] = [(lo, lo + half), (lo + half, hi)]
        if self.piece != before:
            self._notify(size)
        return output

    def _recover(self, in_backward: bool, window_has_grads: bool, failed: int, size: int) -> None:
        """After an out-of-memory error (already out of its except block): free memory, undo a
        partial backward, remember the smaller size."""
        if in_backward:
            if window_has_grads:
                raise RuntimeError(
                    f"oom_split: a micro-batch of {failed} samples ran out of memory in its backward, after earlier "
                    "micro-batches of the same accumulation window had accumulated gradients; the partial "
                    "gradients cannot be separated from theirs, so the update would not be exact. Lower the "
                    "dataloader's batch_size; an out-of-memory error in the forward, or in the backward of a "
                    "window's first micro-batch, is recovered exactly.")
            for p in self.module.parameters():
                p.grad = None  # the window's first backward: its gradients are all this piece's
        free_memory()
        if failed <= 1:
            figures = memory_report(self.module, self.device)
            raise RuntimeError(f"oom_split: one sample does not fit in memory ({figures}). Reduce the model's memory: precision='bf16-mixed', activation checkpointing, or a "
                               "sharded strategy (strategy='fsdp').")
        half = (failed + 1) // 2
        if self.piece is None or half < self.piece:
            self.piece = half

    def _notify(self, size: int) -> None:
        """One line per batch that lowered the size (normally once per run), once the size that fits is known."""
        from trainer.logs.console import ensure_handler, process_rank

        rank = process_rank()
        rank_note = "" if rank == 0 else f" (rank {rank})"
        assert self.piece is not None  # set by the split that called this
        num, last = -(-size // self.piece), size % self.piece
        ensure_handler()
        log.warning(f"oom_split{rank_note}: micro-batch {size} did not fit; training on {num} x {self.piece}"
                    f"{f' (the last {last})' if last else ''}, same update. Later batches are split up front.",
                    extra={"all_ranks": True})  # each rank runs out of memory on its own
