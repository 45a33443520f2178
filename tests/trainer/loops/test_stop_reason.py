"""fit says why it stopped (issue 27, point 2): a limit with the steps done of those planned, an
EarlyStopping with its metric and patience, a callback or the module that set should_stop, in
``trainer.state.stop_reason`` and the end-of-fit summary; the summary says when the validation
metrics are older than the last step; a second fit with nothing left to train says so."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import LEAN
from trainer.callbacks import Callback, EarlyStopping


@pytest.fixture
def status(caplog):
    caplog.set_level(logging.INFO, logger="trainer")
    return lambda: "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("trainer"))


def fit(make_trainer, model=None, **kw):
    trainer = make_trainer(enable_progress_bar=True, **{**LEAN, **kw})  # the bar prints the summary
    trainer.fit(model or BoringModel(), regression_loader(), regression_loader(16))  # 8 batches an epoch
    return trainer


def test_max_epochs_with_the_steps_done_of_those_planned(make_trainer, status):
    trainer = fit(make_trainer, max_epochs=2)
    assert trainer.state.stop_reason == "max_epochs=2 reached (16 of 16 planned optimizer steps)"
    assert "  stopped: max_epochs=2 reached (16 of 16 planned optimizer steps)" in status().splitlines()


def test_the_default_epoch_limit_is_named_as_such(make_trainer):
    trainer = make_trainer(**LEAN, limit_train_batches=1)
    trainer.fit(BoringModel(), regression_loader())
    assert trainer.state.stop_reason.startswith("the default limit of 1000 epochs (no max_epochs, max_steps or "
                                                "max_time was given) reached")


def test_max_steps_inside_an_epoch(make_trainer):
    trainer = fit(make_trainer, max_steps=5)
    assert trainer.state.stop_reason == "max_steps=5 reached (5 optimizer steps, epoch 0)"


def test_max_time(make_trainer):
    class Slow(BoringModel):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)
            return super().training_step(batch, batch_idx)

    trainer = fit(make_trainer, model=Slow(), max_epochs=50, max_time=0.1)
    assert trainer.state.stop_reason.startswith("max_time=0.1 s reached (")
    assert trainer.state.stop_reason.endswith(" of 400 planned optimizer steps)")


def test_early_stopping_names_its_metric_and_patience(make_trainer, status):
    class Flat(BoringModel):  # val/loss never improves
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", torch.tensor(1.0))

    trainer = fit(make_trainer, model=Flat(), max_epochs=10, callbacks=[EarlyStopping("val/loss", patience=2)])
    reason = trainer.state.stop_reason
    assert reason.startswith("EarlyStopping: val/loss ") and " 2 checks" in reason, reason
    assert reason.endswith("(24 of 80 planned optimizer steps)"), reason
    assert f"  stopped: {reason}" in status()


def test_a_callback_or_the_module_that_set_should_stop_is_named(make_trainer):
    class StopAtThree(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                trainer.should_stop = True

    trainer = fit(make_trainer, max_epochs=4, callbacks=[StopAtThree()])
    assert trainer.state.stop_reason == "StopAtThree set trainer.should_stop at global_step 3 (3 of 32 planned " \
                                        "optimizer steps)"

    class Quitter(BoringModel):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    trainer = fit(make_trainer, model=Quitter(), max_epochs=4)
    assert trainer.state.stop_reason.startswith("Quitter set trainer.should_stop at global_step 2")


def test_the_summary_says_when_validation_is_older_than_the_last_step(make_trainer, status):
    fit(make_trainer, max_steps=12)  # validation at the end of epoch 0 (step 8), fit ends at step 12
    assert "  (validation metrics are from global_step 8, 4 optimizer steps before the end)" in status()
    fit(make_trainer, max_epochs=1)
    assert status().count("validation metrics are from") == 1  # validated at the last step: nothing to say


def test_a_second_fit_with_nothing_left_to_train_says_so(make_trainer, status):
    trainer = make_trainer(max_epochs=1, **LEAN)
    model = BoringModel()
    trainer.fit(model, regression_loader())
    assert "nothing left to train" not in status()
    trainer.fit(model, regression_loader())
    assert "fit() has nothing left to train: max_epochs=1 reached (8 of 8 planned optimizer steps). Raise the " \
           "limit (max_epochs, max_steps, max_time) to train further" in status()


def test_no_limit_given_says_1000_epochs_once(make_trainer, status):
    trainer = make_trainer(**LEAN, limit_train_batches=1)
    trainer.fit(BoringModel(), regression_loader())
    trainer.fit(BoringModel(), regression_loader())
    assert status().count("none of max_epochs, max_steps, max_time was given, so fit stops after 1000 epochs") == 1
    make_trainer(max_epochs=1, **LEAN).fit(BoringModel(), regression_loader())
    make_trainer(max_steps=1, **LEAN).fit(BoringModel(), regression_loader())
    make_trainer(fast_dev_run=True, **LEAN).fit(BoringModel(), regression_loader())
    assert status().count("fit stops after 1000 epochs") == 1
