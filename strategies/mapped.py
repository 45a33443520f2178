"""Resuming without holding the checkpoint file and the live state in memory at once.

A resume reads the checkpoint with ``torch.load(mmap=True)``: its tensors are views of a private,
read-only memory map of the file, so nothing is read until it is used. The weights are copied
into the live parameters in chunks of about 64 MB and the optimizer state is copied out tensor by
tensor; after each copy the pages just read are dropped from the process (``madvise(DONTNEED)``,
only inside the file's own mapping, found in ``/proc/self/maps``; if touched again they are read
back from the file). Peak memory is then the live state plus one chunk, not twice the state.
Where the platform lacks ``/proc`` or ``madvise``, nothing is dropped and the map still saves
the up-front read of the whole file.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Iterable

import torch

_MADV_DONTNEED = 4
_CHUNK_BYTES = 64 * 1024 * 1024


class MappedPages:
    """The address ranges where one file is mapped into this process, and a way to drop their pages."""

    def __init__(self, path: str) -> None:
        self.ranges: list[tuple[int, int]] = []
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            st = os.stat(path)
            with open("/proc/self/maps") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[4] == str(st.st_ino) and _same_device(fields[3], st.st_dev):
                        lo, hi = (int(x, 16) for x in fields[0].split("-"))
                        self.ranges.append((lo, hi))
            self._madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError):
            self.ranges = []

    def release(self, tensors: Iterable[torch.Tensor]) -> None:
        """Drop the resident pages that lie wholly inside both a tensor and the file's mapping."""
        if not self.ranges:
            return
        page = self._page
        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.numel() == 0:
                continue
            lo = t.data_ptr()
            hi = lo + t.numel() * t.element_size()
            for a, b in self.ranges:
                start, end = max(lo, a), min(hi, b)
                start = -(-start // page) * page  # inward: never a byte outside this tensor
                end = end // page * page
                if end > start:
                    self._madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _same_device(field: str, dev: int) -> bool:
    major, minor = (int(x, 16) for x in field.split(":"))
    return os.makedev(major, minor) == dev


class MappedCheckpoint(dict):
    """A loaded checkpoint whose tensors are views of a memory map of its file (``pages``)."""

    pages: MappedPages


def load_mapped(path: str, map_location: Any) -> Any:
    """``torch.load(weights_only=True, mmap=True)``; a file torch cannot map (the legacy, non-zip
    format) is read whole instead."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict):
        return obj
    mapped = MappedCheckpoint(obj)
    mapped.pages = MappedPages(path)
    return mapped


def load_module_in_place(module: torch.nn.Module, state_dict: dict[str, Any], pages: MappedPages) -> None:
    """``module.load_state_dict(state_dict, strict=False)`` in chunks of about 64 MB, dropping each
    chunk's mapped pages once it is copied into the live tensors."""
    chunk: dict[str, Any] = {}
    size = 0
    for key, value in state_dict.items():
        chunk[key] = value
        size += value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0
        if size >= _CHUNK_BYTES:
            module.load_state_dict(chunk, strict=False)
            pages.release(chunk.values())
            chunk, size = {}, 0
    module.load_state_dict(chunk, strict=False)
    pages.release(chunk.values())


def own_optimizer_state(optimizer: torch.optim.Optimizer, pages: MappedPages) -> None:
    """After ``optimizer.load_state_dict``: give each state tensor that still views the file its own
    memory (a copy), and drop the mapped pages it was read from."""
    for state in optimizer.state.values():
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor) and value.device.type == "cpu" and pages.ranges \
                    and any(a <= value.data_ptr() < b for a, b in pages.ranges):
                state[key] = value.clone()
                pages.release([value])
