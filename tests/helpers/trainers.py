"""One way to build a Trainer in tests (the ``make_trainer`` fixture in conftest.py hands it out)."""

from __future__ import annotations

from typing import Any

from trainer import Trainer


def quiet_trainer(**kw: Any) -> Trainer:
    """A Trainer on the CPU without a logger or a progress bar; any argument overrides those."""
    kw.setdefault("logger", False)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("accelerator", "cpu")
    return Trainer(**kw)
