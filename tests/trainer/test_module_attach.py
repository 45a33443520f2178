"""The module's documented slots: the Trainer attaches itself with ``module.attach(trainer)`` and the
loops point ``self.log`` at the running stage's results with ``module.log_into(results)``; nothing outside
the module writes its ``_trainer`` or ``_results``. ``module.trainer`` behaves as Lightning's."""

from __future__ import annotations

import ast

import pytest

from tests import ROOT
from tests.helpers.models import BoringModel, regression_loader
from trainer.results import Results


class Recording(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.attached: list = []
        self.targets: list = []

    def attach(self, trainer):
        self.attached.append(trainer)
        super().attach(trainer)

    def log_into(self, results):
        self.targets.append(type(results).__name__ if results is not None else None)
        return super().log_into(results)


def test_the_trainer_attaches_through_attach_and_the_loops_log_through_log_into(make_trainer):
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    model = Recording()
    trainer.fit(model, regression_loader(32, 8), regression_loader(16, 8))
    assert model.attached == [trainer]
    assert model.trainer is trainer and model.is_attached
    # fit's training results, validation's inside it (then back to training's), and none after the stage
    assert model.targets[0] == "Results" and model.targets[-1] is None
    assert len(model.targets) >= 4
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics


def test_log_into_returns_the_previous_target_and_self_log_writes_there():
    model = BoringModel()
    first, second = Results("fit"), Results("validate")
    assert model.log_into(first) is None
    assert model.log_into(second) is first
    assert model.log_into(None) is second
    with pytest.warns(UserWarning, match=r"self.log\('x', ...\) called outside trainer.fit/validate/test: ignored"):
        model.log("x", 1.0)


def test_module_trainer_as_in_lightning():
    model = BoringModel()
    assert not model.is_attached and model.global_step == 0 and model.loggers == []
    with pytest.raises(RuntimeError, match=r"BoringModel.trainer: this module is not attached to a Trainer"):
        model.trainer
    sentinel = object()
    model.trainer = sentinel  # Lightning's setter
    assert model.trainer is sentinel and model.is_attached
    model.attach(None)
    assert not model.is_attached


def test_no_library_file_writes_a_modules_trainer_or_results_slot():
    bad = []
    for folder in ("trainer", "callbacks", "strategies"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("_trainer", "_results") \
                        and isinstance(node.ctx, ast.Store) \
                        and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "write module.attach(trainer) / module.log_into(results) instead: " + ", ".join(bad)
