"""Status lines: the ``trainer`` logger, on rank zero only.

The logger gets a stream handler at INFO the first time it is used, unless the application has
configured it (or the root logger) already, as Lightning does for its own logger.
"""

from __future__ import annotations

import logging
import os

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
