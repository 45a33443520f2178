"""Accelerate's ``get_logger``: a standard ``logging`` logger whose records are written by the main
process only (``main_process_only=True``, the default) or by every process, optionally one process
after the other (``in_order=True``). Usable before any Accelerator exists: the process comes from the
launcher's environment.

Example:
    >>> logger = get_logger(__name__, log_level="INFO")
    >>> logger.info("written once per job")
    >>> logger.info("one line per process", main_process_only=False)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from trainer.logs.console import process_rank


def _world() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class MultiProcessAdapter(logging.LoggerAdapter):
    """A ``LoggerAdapter`` whose methods take ``main_process_only=`` and ``in_order=``."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        main_process_only = kwargs.pop("main_process_only", True)
        in_order = kwargs.pop("in_order", False)
        kwargs.setdefault("stacklevel", 2)
        if not self.isEnabledFor(level):
            return
        if main_process_only and in_order:
            raise ValueError("logger.log(..., main_process_only=True, in_order=True): in_order only orders the "
                             "processes' records; pass main_process_only=False with it.")
        if not in_order or _world() == 1:
            if not main_process_only or process_rank() == 0:
                msg, processed = self.process(msg, kwargs)
                self.logger.log(level, msg, *args, **processed)
            return
        import torch.distributed as dist

        for rank in range(_world()):  # one process after the other; every process must make this call
            if rank == process_rank():
                msg, processed = self.process(msg, kwargs)
                self.logger.log(level, msg, *args, **processed)
                for handler in self.logger.handlers + logging.getLogger().handlers:
                    handler.flush()
            if dist.is_available() and dist.is_initialized():
                dist.barrier()

    def warning_once(self, *args: Any, **kwargs: Any) -> None:
        """``warning`` the first time these arguments are seen in this process."""
        key = (args, tuple(sorted(kwargs.items())))
        seen = self.__dict__.setdefault("_warned", set())
        if key not in seen:
            seen.add(key)
            self.warning(*args, **kwargs)


def get_logger(name: str, log_level: str | int | None = None) -> MultiProcessAdapter:
    """The logger ``name`` wrapped so each call says which processes write (see the module doc).
    ``log_level`` (e.g. "INFO") sets the logger's level; else the ``ACCELERATE_LOG_LEVEL`` variable
    does, when set."""
    if log_level is None:
        log_level = os.environ.get("ACCELERATE_LOG_LEVEL")
    logger = logging.getLogger(name)
    if log_level is not None:
        logger.setLevel(log_level.upper() if isinstance(log_level, str) else log_level)
        logger.root.setLevel(log_level.upper() if isinstance(log_level, str) else log_level)
    return MultiProcessAdapter(logger, {})


_LIBRARY = "trainer"


def get_verbosity() -> int:
    """The level of the library's own logger (``trainer``)."""
    return logging.getLogger(_LIBRARY).getEffectiveLevel()


def set_verbosity(level: int) -> None:
    logging.getLogger(_LIBRARY).setLevel(level)


def set_verbosity_debug() -> None:
    set_verbosity(logging.DEBUG)


def set_verbosity_info() -> None:
    set_verbosity(logging.INFO)


def set_verbosity_warning() -> None:
    set_verbosity(logging.WARNING)


def set_verbosity_error() -> None:
    set_verbosity(logging.ERROR)


__all__ = ["MultiProcessAdapter", "get_logger", "get_verbosity", "set_verbosity", "set_verbosity_debug",
           "set_verbosity_error", "set_verbosity_info", "set_verbosity_warning"]
