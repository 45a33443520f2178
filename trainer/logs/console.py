"""Status lines: the ``trainer`` logger, on rank zero only (shared with strategies/ and callbacks/)."""

from trainer.strategies.support import ensure_handler, log, process_rank, rank_zero_info, rank_zero_warn

__all__ = ["ensure_handler", "log", "process_rank", "rank_zero_info", "rank_zero_warn"]
