"""What every package shares (public so that callbacks/, trainer/ and strategies/ may use it): error suggestions,
collection traversal and rank-zero console logging."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable, Iterable, cast

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
            return cast(Any, type(data))(items)  # a Mapping subclass's own constructor
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


# Status lines ("Resuming from ...", "Logging to ...", the model summary) go through the ``trainer``
# logger, never a bare print, so an application can silence or redirect them:
#     logging.getLogger("trainer").setLevel(logging.WARNING)
# The logger only passes records of global rank zero (a ``RankZeroFilter``; a record logged with
# ``extra={"all_ranks": True}`` passes on every rank). Unless the application configured logging
# itself (a handler on the ``trainer`` or the root logger), the first status line installs a
# ``ConsoleHandler``: INFO lines go to stdout -- where these lines were printed before they went
# through logging -- and warnings to stderr, both as the bare message.
log = logging.getLogger("trainer")


def process_rank() -> int:
    """This process's global rank: the process group's if one is running, else the launcher's
    environment (0 when not launched)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


class RankZeroFilter(logging.Filter):
    """Passes the records of global rank zero, and those logged with ``extra={"all_ranks": True}``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "all_ranks", False) or process_rank() == 0


def _configured_by_application(logger: logging.Logger) -> bool:
    """The application (not pytest's capture) put a handler on ``logger``."""
    return any(not type(h).__module__.startswith("_pytest") for h in logger.handlers)


class ConsoleHandler(logging.Handler):
    """INFO and below to ``sys.stdout``, WARNING and above to ``sys.stderr``, looked up at each line
    (so a redirected or captured stream receives it). Says nothing once the application configured
    the root logger: its handlers then show the lines, once."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _configured_by_application(logging.getLogger()):
            return
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


log.addFilter(RankZeroFilter())


def ensure_handler() -> None:
    """Install the ``ConsoleHandler`` (at INFO) unless the application configured logging."""
    if log.handlers or _configured_by_application(logging.getLogger()):
        return
    log.addHandler(ConsoleHandler())
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def rank_zero_info(message: str) -> None:
    """A status line: ``message`` at INFO through the ``trainer`` logger, on global rank zero."""
    ensure_handler()
    log.info(message)


def rank_zero_warn(message: str) -> None:
    """``message`` at WARNING through the ``trainer`` logger, on global rank zero."""
    ensure_handler()
    log.warning(message)
