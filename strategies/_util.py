"""Small helpers shared by the packages: error suggestions and collection traversal."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import torch


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(value).lower(), list(choices), n=1, cutoff=0.4)
    return f" Did you mean {close[0]!r}?" if close else ""


def quoted(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in choices)


def apply_to_tensors(data: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor nested in dicts, lists, tuples, namedtuples and dataclasses.

    Objects that are none of these but have a ``.to`` method (e.g. a HF BatchEncoding is a
    Mapping, a PackedSequence is a namedtuple) are handled by the cases above; anything else
    is returned unchanged.
    """
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        items = {k: apply_to_tensors(v, fn) for k, v in data.items()}
        try:
            return type(data)(items)
        except TypeError:  # mappings whose constructor is not dict-like
            return items
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_tensors(v, fn) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: apply_to_tensors(getattr(data, f.name), fn)
                   for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    return data


def first_tensor(data: Any) -> torch.Tensor | None:
    """The first tensor found in a nested batch, depth first, or None."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, Mapping):
        values: Iterable[Any] = data.values()
    elif isinstance(data, (list, tuple)):
        values = data
    elif dataclasses.is_dataclass(data) and not isinstance(data, type):
        values = (getattr(data, f.name) for f in dataclasses.fields(data))
    else:
        return None
    for v in values:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def batch_size_of(batch: Any) -> int | None:
    """Length of the first dimension of the first tensor in ``batch`` (host-side, no sync)."""
    kind = type(batch)
    if (kind is tuple or kind is list) and batch and type(batch[0]) is torch.Tensor:
        t = batch[0]  # the common (inputs, targets) batch, without the general walk
    else:
        t = first_tensor(batch)
    if t is None or t.dim() == 0:
        return None
    return int(t.shape[0])


# Status lines: the ``trainer`` logger on rank zero. It gets a stream handler at INFO the first time it
# is used, unless the application configured it (or the root logger), as Lightning does for its logger.
log = logging.getLogger("trainer")


def process_rank() -> int:
    """This process's global rank, from the launcher's environment (0 when not launched)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def ensure_handler() -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def rank_zero_info(message: str) -> None:
    """Log ``message`` at INFO on rank zero."""
    if process_rank() == 0:
        ensure_handler()
        log.info(message)


def rank_zero_warn(message: str) -> None:
    """Log ``message`` at WARNING on rank zero."""
    if process_rank() == 0:
        ensure_handler()
        log.warning(message)
