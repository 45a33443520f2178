"""The Trainer's settings are its signature: every ``TrainerConfig`` field is a typed keyword-only
parameter of ``Trainer.__init__`` (an IDE and ``help(Trainer)`` show them), and Lightning's read-only
mirrors of the settings are ordinary properties of the class, not attributes attached after it."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from tests import ROOT
from trainer import Trainer
from trainer.trainer import _NONE_IS_DEFAULT
from trainer.trainer_config import TrainerConfig

# Lightning's trainer.<setting> mirrors
MIRRORS = ("fast_dev_run", "gradient_clip_val", "gradient_clip_algorithm", "val_check_interval",
           "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "limit_test_batches",
           "limit_predict_batches", "num_sanity_val_steps", "max_epochs", "max_steps", "log_every_n_steps",
           "default_root_dir")


def test_every_setting_is_a_typed_keyword_only_parameter():
    params = inspect.signature(Trainer).parameters
    for field in dataclasses.fields(TrainerConfig):
        param = params.get(field.name)
        assert param is not None, f"TrainerConfig.{field.name} is not a parameter of Trainer.__init__"
        assert param.kind is inspect.Parameter.KEYWORD_ONLY, field.name
        assert param.annotation is not inspect.Parameter.empty, f"Trainer({field.name}=...) has no type annotation"
        # the signature shows the real default, or None where something else decides (launch settings, barebones)
        expected = None if field.name in _NONE_IS_DEFAULT else field.default
        assert param.default == expected, (field.name, param.default, field.default)
    # nothing is positional, and only the catch of unknown names is a **kwargs
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params.values())
    assert [p.name for p in params.values() if p.kind is p.VAR_KEYWORD] == ["unknown"]


def test_help_shows_the_settings():
    text = inspect.signature(Trainer).__str__()
    assert "max_epochs: 'int | None' = None" in text and "accumulate_grad_batches: 'int | None' = None" in text


def test_the_none_defaults_resolve_to_the_configs_defaults():
    trainer = Trainer(logger=False)
    assert trainer.config.accumulate_grad_batches == 1
    assert trainer.config.enable_checkpointing and trainer.config.enable_progress_bar
    assert trainer.config.enable_model_summary


@pytest.mark.parametrize("name", MIRRORS)
def test_lightning_mirrors_are_properties_of_the_class(name):
    assert isinstance(vars(Trainer).get(name), property), f"Trainer.{name} is not a property defined in the class"
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert getattr(trainer, name) == getattr(trainer.config, name)


def test_a_given_setting_reads_back_through_its_mirror():
    trainer = Trainer(logger=False, enable_progress_bar=False, limit_val_batches=3, gradient_clip_val=0.5,
                      num_sanity_val_steps=0, check_val_every_n_epoch=2, gradient_clip_algorithm="value")
    assert (trainer.limit_val_batches, trainer.gradient_clip_val, trainer.num_sanity_val_steps,
            trainer.check_val_every_n_epoch, trainer.gradient_clip_algorithm) == (3, 0.5, 0, 2, "value")


def test_nothing_is_attached_to_the_trainer_class_after_it():
    """No ``setattr(Trainer, ...)`` (members an IDE, help() and a type checker cannot see)."""
    tree = ast.parse((ROOT / "trainer" / "trainer.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id == "setattr" and node.args and isinstance(node.args[0], ast.Name)
             and node.args[0].id == "Trainer"]
    assert not calls, f"setattr(Trainer, ...) at line(s) {[c.lineno for c in calls]}"
