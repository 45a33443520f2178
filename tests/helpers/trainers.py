"""One way to build a Trainer in tests (the ``make_trainer`` fixture in conftest.py hands it out)."""

from __future__ import annotations

from typing import Any

from trainer import Trainer

# No ModelCheckpoint and no sanity check: ``make_trainer(max_epochs=1, **LEAN)`` for tests about the fit
# alone (its steps, hooks, errors and files); a test that wants one of them back spells the other out.
LEAN = {"enable_checkpointing": False, "num_sanity_val_steps": 0}


def quiet_trainer(**kw: Any) -> Trainer:
    """A Trainer on the CPU without a logger or a progress bar; any argument overrides those."""
    kw.setdefault("logger", False)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("accelerator", "cpu")
    return Trainer(**kw)
