"""What broke when Lightning's own examples ran here with only the names changed (issue 13, point 7):
hparams with attribute access, Lightning's step/epoch metric names in evaluation, metrics reset per
entry point, the torchmetrics documented pattern, and the everyday Trainer switches."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from trainer.callbacks import ModelCheckpoint
from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import LEAN


# -- hparams --------------------------------------------------------------------------------------------------

class WithHparams(BoringModel):
    def __init__(self, learning_rate: float = 0.1, hidden: int = 3, *, name: str = "x", **extra):
        super().__init__(lr=learning_rate)
        self.save_hyperparameters(ignore="name")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)


def test_hparams_have_attribute_access_and_keep_kwargs(make_trainer):
    model = WithHparams(learning_rate=0.5, extra=1)
    assert model.hparams.learning_rate == 0.5 and model.hparams["hidden"] == 3 and model.hparams.extra == 1
    assert "name" not in model.hparams
    model.hparams.hidden = 7
    assert model.hparams["hidden"] == 7
    with pytest.raises(AttributeError, match="hparams has no 'missing'; it holds"):
        model.hparams.missing
    make_trainer(max_epochs=1, **LEAN).fit(model, regression_loader(16, 8))


def test_save_hyperparameters_takes_a_namespace_or_a_dict_and_checks_names():
    class FromNamespace(TrainModule):
        def __init__(self, hp):
            super().__init__()
            self.save_hyperparameters(hp)

    assert FromNamespace(argparse.Namespace(lr=1)).hparams.lr == 1
    assert FromNamespace({"lr": 2}).hparams.lr == 2

    class Wrong(TrainModule):
        def __init__(self, lr=1):
            super().__init__()
            self.save_hyperparameters("learning_rate")

    with pytest.raises(ValueError, match="'learning_rate' is not an argument of the calling __init__"):
        Wrong()


def test_hparams_assigned_as_a_dict_gain_attribute_access():
    model = BoringModel()
    model.hparams = {"a": 1}
    assert model.hparams.a == 1


# -- metric names in evaluation (Lightning's) --------------------------------------------------------------------

class ValOnStep(BoringModel):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y), on_step=True)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y), on_step=True, on_epoch=True)


def test_val_metric_logged_on_step_is_also_published_under_its_plain_name(make_trainer):
    checkpoint = ModelCheckpoint(dirpath="ckpts", monitor="val_loss")
    trainer = make_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint], log_every_n_steps=1,
                           num_sanity_val_steps=0)
    trainer.fit(ValOnStep(), regression_loader(16, 8), regression_loader(16, 4))
    metrics = trainer.callback_metrics
    assert metrics["val_loss"] == metrics["val_loss_epoch"] and "val_loss_step" not in metrics
    assert checkpoint.best_model_path and os.path.exists(checkpoint.best_model_path)
    assert "val_loss_step" in trainer.logged_metrics  # the loggers still get the step values


def test_validate_and_test_return_no_step_keys_and_name_loaders_as_lightning(make_trainer):
    model, trainer = ValOnStep(), make_trainer(**LEAN)
    (val,) = trainer.validate(model, regression_loader(16, 4))
    assert set(val) == {"val_loss", "val_loss_epoch"} and val["val_loss"] == val["val_loss_epoch"]
    results = trainer.test(model, [regression_loader(16, 4), regression_loader(8, 4, seed=1)])
    for i, result in enumerate(results):
        assert set(result) == {f"test_loss/dataloader_idx_{i}", f"test_loss_epoch/dataloader_idx_{i}"}
    assert results[0]["test_loss/dataloader_idx_0"] != results[1]["test_loss/dataloader_idx_1"]


def test_callback_metrics_hold_only_the_last_entry_points_metrics(make_trainer):
    model, trainer = BoringModel(), make_trainer(max_epochs=1, **LEAN)
    trainer.fit(model, regression_loader(16, 8), regression_loader(16, 8))
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    (test,) = trainer.test(model, regression_loader(16, 8))
    assert trainer.callback_metrics == test == {"test/loss": pytest.approx(test["test/loss"])}


# -- torchmetrics' documented pattern ------------------------------------------------------------------------

def test_torchmetrics_documented_pattern_logs_the_batch_value_and_nothing_else(make_trainer):
    torchmetrics = pytest.importorskip("torchmetrics")

    class Classifier(TrainModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(5, 3)
            self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
            self.batch_accs, self.epoch_accs = [], []

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.layer(x)
            self.batch_accs.append(float((logits.argmax(1) == y).float().mean()))
            self.train_acc(logits, y)
            self.log("train_acc_step", self.train_acc)
            return torch.nn.functional.cross_entropy(logits, y)

        def on_train_epoch_end(self):
            self.epoch_accs.append(float(self.train_acc.compute()))
            self.log("train_acc_epoch", self.train_acc.compute())
            self.train_acc.reset()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 5, generator=g), torch.randint(0, 3, (24,), generator=g))
    model, trainer = Classifier(), make_trainer(max_epochs=2, log_every_n_steps=1, **LEAN)
    trainer.fit(model, DataLoader(data, batch_size=8))
    metrics = trainer.callback_metrics
    assert set(metrics) == {"train_acc_step", "train_acc_epoch"}
    assert metrics["train_acc_step"] == pytest.approx(model.batch_accs[-1])
    assert metrics["train_acc_epoch"] == pytest.approx(model.epoch_accs[-1])
    assert model.epoch_accs[-1] == pytest.approx(sum(model.batch_accs[3:]) / 3)


# -- Trainer switches ------------------------------------------------------------------------------------------

def test_benchmark_sets_cudnn_benchmark(make_trainer):
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        make_trainer(max_epochs=1, benchmark=True, **LEAN).fit(BoringModel(), regression_loader(8, 8))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = saved
    with pytest.raises(TypeError, match=r"Trainer\(benchmark='yes'\): expected True, False or None"):
        Trainer(benchmark="yes")


def test_overfit_batches_trains_on_the_same_first_batches_in_order(make_trainer):
    shuffled = regression_loader(64, 8, shuffle=True)
    with pytest.warns(UserWarning, match="overfit_batches=...\\): the training dataloader shuffles"):
        overfit = BoringModel()
        trainer = make_trainer(max_epochs=3, overfit_batches=2, **LEAN)
        trainer.fit(overfit, shuffled, regression_loader(64, 8))
    reference = BoringModel()
    make_trainer(max_epochs=3, limit_train_batches=2, **LEAN).fit(reference, regression_loader(64, 8))
    assert torch.equal(overfit.layer.weight, reference.layer.weight)
    assert trainer.num_training_batches == 2 and trainer.global_step == 6


class StopsAtOnce(BoringModel):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.trainer.should_stop = True


@pytest.mark.parametrize("setting, steps", [({"min_epochs": 2}, 4), ({"min_steps": 3}, 3), ({}, 1)])
def test_min_epochs_and_min_steps_hold_off_a_stop(setting, steps, make_trainer):
    trainer = make_trainer(max_epochs=5, **setting, **LEAN)
    trainer.fit(StopsAtOnce(), regression_loader(16, 8))
    assert trainer.global_step == steps


def test_min_settings_are_checked():
    with pytest.raises(ValueError, match=r"Trainer\(min_epochs=3, max_epochs=2\): min_epochs cannot exceed"):
        Trainer(min_epochs=3, max_epochs=2)
    with pytest.raises(ValueError, match=r"Trainer\(min_steps=-1\): expected an int >= 0 or None"):
        Trainer(min_steps=-1)


def test_detect_anomaly_names_the_backward_that_made_nan(make_trainer):
    class NanGrad(BoringModel):
        def training_step(self, batch, batch_idx):
            return (self.layer.weight * float("nan")).sum() + super().training_step(batch, batch_idx)

    with pytest.raises(RuntimeError, match="returned nan values"):
        make_trainer(max_epochs=1, detect_anomaly=True, **LEAN).fit(NanGrad(), regression_loader(8, 8))
    assert not torch.is_anomaly_enabled()


@pytest.mark.parametrize("inference_mode", [True, False])
def test_inference_mode_decides_how_evaluation_runs_without_grad(inference_mode, make_trainer):
    class Records(BoringModel):
        seen = []

        def validation_step(self, batch, batch_idx):
            self.seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

        predict_step = lambda self, batch, batch_idx: self.seen.append(torch.is_inference_mode_enabled())

    model, trainer = Records(), make_trainer(inference_mode=inference_mode, **LEAN)
    trainer.validate(model, regression_loader(8, 8))
    trainer.predict(model, regression_loader(8, 8))
    assert model.seen == [(inference_mode, False), inference_mode]


def test_barebones_turns_off_everything_beside_the_loop():
    trainer = Trainer(max_epochs=1, barebones=True)
    assert trainer.loggers == [] and trainer.checkpoint_callback is None and not trainer.config.enable_progress_bar
    trainer.fit(BoringModel(), regression_loader(8, 8))
    assert not os.path.exists("runs")
    with pytest.raises(ValueError, match=r"Trainer\(barebones=True, enable_checkpointing=True\): barebones turns off"):
        Trainer(barebones=True, enable_checkpointing=True)
    with pytest.raises(ValueError, match=r"Trainer\(barebones=True, logger=...\)"):
        Trainer(barebones=True, logger=[])


def test_plugins_are_refused_with_where_each_kind_goes():
    from trainer.strategies import Precision

    class SLURMEnvironment:
        pass

    with pytest.raises(ValueError, match=r"plugins are not supported: pass it as Trainer\(precision=...\)"):
        Trainer(plugins=[Precision("bf16-mixed")])
    with pytest.raises(ValueError, match="cluster environment is read from the launcher's variables"):
        Trainer(plugins=SLURMEnvironment())
    Trainer(plugins=None)
    Trainer(plugins=[])
