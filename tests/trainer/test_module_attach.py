"""The module's documented slots: the Trainer attaches itself with ``module.attach(trainer)`` and the
loops point ``self.log`` at the running stage's results with ``module.log_into(results)``; nothing outside
the module writes its ``_trainer`` or ``_results``. ``module.trainer`` behaves as Lightning's."""

from __future__ import annotations

import ast

import pytest

from tests import ROOT
from tests.helpers.models import BoringModel, regression_loader
from trainer.callbacks import Callback
from trainer.logs.results import Results
from trainer.utils.exceptions import MisconfigurationException


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
                if isinstance(node, ast.Attribute) and node.attr in ("_trainer", "_results", "_no_log_hook",
                                                                     "_logging_module") \
                        and isinstance(node.ctx, ast.Store) \
                        and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, ("write module.attach(trainer) / module.log_into(results) / module.refuse_logging(hook) / "
                     "callback.attach_module(module) instead: " + ", ".join(bad))


def test_refuse_logging_names_the_hook_and_gives_back_the_previous_refusal():
    model = BoringModel()
    model.log_into(Results("fit"))
    assert model.refuse_logging("on_fit_start") is None
    with pytest.raises(MisconfigurationException, match=r"self.log\('x', ...\) inside on_fit_start: a value logged"):
        model.log("x", 1.0)
    assert model.refuse_logging(None) == "on_fit_start"
    model.log("x", 1.0)  # allowed again


class LogsFromACallback(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.log("from_callback", 2.0)


class RefusedInFitStart(BoringModel):
    def on_fit_start(self):
        self.log("too_early", 1.0)


def test_the_dispatcher_attaches_the_module_to_callbacks_and_refuses_logging_where_it_is_never_shown(make_trainer):
    callback = LogsFromACallback()
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, callbacks=[callback])
    model = BoringModel()
    trainer.fit(model, regression_loader(32, 8))
    assert callback._logging_module is model and "from_callback" in trainer.callback_metrics
    with pytest.raises(MisconfigurationException, match=r"self.log\('too_early', ...\) inside on_fit_start"):
        make_trainer(max_epochs=1, limit_train_batches=2).fit(RefusedInFitStart(), regression_loader(32, 8))


def test_attach_module_is_what_callback_log_goes_through():
    callback, model = LogsFromACallback(), BoringModel()
    with pytest.raises(RuntimeError, match=r"LogsFromACallback.log\('x', ...\): this callback is not attached"):
        callback.log("x", 1.0)
    callback.attach_module(model)
    results = Results("fit")
    model.log_into(results)
    callback.log("x", 1.0)
    assert model.log_into(None) is results
