"""The first hour's silent no-ops get a line (issue 27, point 1): every training_step returning None,
validate/test/predict on a module without that step (refused; test() returned [{}]), validation_step
without validation data, a misspelt hook on the module or a callback, and a float64 batch meeting
float32 weights. (The 1000-epoch default and a second fit with nothing left: test_stop_reason.py.)"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import LEAN
from trainer import TrainModule
from trainer.callbacks import Callback
from trainer.utils.exceptions import MisconfigurationException


@pytest.fixture
def said(caplog):
    caplog.set_level(logging.INFO, logger="trainer")
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("trainer")]


class TrainOnly(TrainModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_every_training_step_returning_none_is_said_once(make_trainer, said):
    class Skipper(TrainOnly):
        def training_step(self, batch, batch_idx):
            return None

    model = Skipper()
    before = [p.detach().clone() for p in model.parameters()]
    make_trainer(max_epochs=3, **LEAN).fit(model, regression_loader())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    lines = [m for m in said() if "returned None" in m]
    assert lines == ["training_step returned None for all 8 batches of epoch 0, so nothing was trained (no backward, "
                     "no optimizer step). Return the loss (a tensor, or a dict with 'loss'); None skips a batch."]

    class SomeSkipped(TrainOnly):  # skipping some batches is a feature: nothing to say
        def training_step(self, batch, batch_idx):
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

    make_trainer(max_epochs=1, **LEAN).fit(SomeSkipped(), regression_loader())
    assert len([m for m in said() if "returned None" in m]) == 1


@pytest.mark.parametrize("stage, step", [("test", "test_step"), ("validate", "validation_step"),
                                         ("predict", "predict_step")])
def test_evaluating_a_module_without_that_step_is_refused_with_the_fix(make_trainer, stage, step):
    trainer = make_trainer(**LEAN)
    with pytest.raises(MisconfigurationException, match=rf"trainer\.{stage}\(TrainOnly\(\.\.\.\)\): TrainOnly defines no {step}, so "
                                        rf"there is nothing to run .* Add it to TrainOnly: def {step}\(self, batch"):
        getattr(trainer, stage)(TrainOnly(), regression_loader())


def test_predict_with_forward_and_steps_set_off_by_assignment(make_trainer):
    class WithForward(TrainOnly):
        def forward(self, x):
            return self.layer(x)

    out = make_trainer(**LEAN).predict(WithForward(), DataLoader(torch.randn(8, 4), batch_size=4))
    assert len(out) == 2 and out[0].shape == (4, 1)  # the default predict_step calls forward
    model = BoringModel()
    model.validation_step = None  # Lightning's way to switch validation off
    with pytest.raises(MisconfigurationException, match="defines no validation_step"):
        make_trainer(**LEAN).validate(model, regression_loader())
    assert make_trainer(**LEAN).validate(BoringModel(), regression_loader())  # defined: runs


def test_validation_step_without_validation_data_says_validation_is_skipped(make_trainer, said):
    make_trainer(max_epochs=1, **LEAN).fit(BoringModel(), regression_loader())
    assert ("BoringModel defines validation_step, but fit got no validation data, so validation is skipped. Pass "
            "val_dataloaders=... (or a datamodule / module with val_dataloader()) to run it.") in said()
    make_trainer(max_epochs=1, **LEAN).fit(TrainOnly(), regression_loader())
    make_trainer(max_epochs=1, **LEAN).fit(BoringModel(), regression_loader(), regression_loader(16))
    assert sum("validation is skipped" in m for m in said()) == 1


def test_a_misspelt_hook_on_the_module_or_a_callback_is_named_with_the_hook(make_trainer, said):
    class Typos(BoringModel):
        def validation_steps(self, batch, batch_idx):  # never called
            pass

        def on_train_epoch_ends(self):
            pass

        def compute_loss(self, batch):  # a helper of its own: not a typo
            pass

    class Watcher(Callback):
        def on_train_epoch_ends(self, trainer, module):
            pass

        def on_validation_end(self, trainer, module):  # a real hook
            pass

    make_trainer(max_epochs=1, callbacks=[Watcher()], **LEAN).fit(Typos(), regression_loader())
    lines = [m for m in said() if "is not a hook" in m]
    assert lines == [
        "Typos.on_train_epoch_ends is not a hook, so it is never called (it is a method of the module). Did you mean "
        "on_train_epoch_end? Rename it to override that hook.",
        "Typos.validation_steps is not a hook, so it is never called (it is a method of the module). Did you mean "
        "validation_step? Rename it to override that hook.",
        "Watcher.on_train_epoch_ends is not a hook, so it is never called (it is a method of a callback). Did you "
        "mean on_train_epoch_end? Rename it to override that hook."]


def test_a_float64_batch_against_float32_weights_names_the_dtype_and_the_fix(make_trainer):
    x, y = np.random.default_rng(0).normal(size=(16, 4)), np.random.default_rng(1).normal(size=(16, 1))
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=8)
    with pytest.raises(RuntimeError) as caught:
        make_trainer(max_epochs=1, **LEAN).fit(TrainOnly(), loader)
    note = "\n".join(getattr(caught.value, "__notes__", []))
    assert ("A dtype mismatch in TrainOnly.training_step (batch_idx 0): the module's parameters are float32, the batch "
            "holds batch[0]: float64, batch[1]: float64. Make the data float32 where it is built (numpy arrays are "
            "float64: torch.from_numpy(a).float()") in note
