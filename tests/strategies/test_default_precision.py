"""precision=None: mixed precision whenever a GPU is there, fp32 on CPU and MPS; explicit wins."""

from __future__ import annotations

import logging

import pytest

from trainer import Trainer
from trainer.strategies import SingleDeviceStrategy
from trainer.strategies.registry import default_precision


@pytest.mark.parametrize("kind, bf16, want", [("cuda", True, "bf16-mixed"), ("cuda", False, "16-mixed"),
                                              ("cpu", False, "32-true"), ("mps", False, "32-true"),
                                              ("cpu", True, "32-true"), ("mps", True, "32-true")])
def test_default_precision_follows_the_device(kind, bf16, want):
    name, why = default_precision(kind, bf16)
    assert name == want and why


def test_the_trainer_on_cpu_says_once_what_it_chose(caplog):
    with caplog.at_level(logging.INFO, logger="trainer"):
        trainer = Trainer(accelerator="cpu", logger=False)
    assert trainer.strategy.precision.name == "32-true"
    lines = [r.getMessage() for r in caplog.records if "precision=" in r.getMessage()]
    assert lines == ["Using precision='32-true' (CPU, no GPU; pass Trainer(precision=...) to choose)."]


def test_an_explicit_precision_wins_and_says_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="trainer"):
        trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False)
        own = Trainer(strategy=SingleDeviceStrategy("cpu", precision="bf16-true"), logger=False)
    assert trainer.strategy.precision.name == "bf16-mixed" and own.strategy.precision.name == "bf16-true"
    assert not [r for r in caplog.records if "Using precision" in r.getMessage()]


def test_the_line_is_rank_zero_only(caplog, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with caplog.at_level(logging.INFO, logger="trainer"):
        Trainer(accelerator="cpu", logger=False)
    assert not [r for r in caplog.records if "Using precision" in r.getMessage()]
