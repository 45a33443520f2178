"""torchmetrics objects passed to self.log: updated by the step, computed and reset at epoch end,
synchronised across processes by torchmetrics itself; the epoch value equals computing the metric
on the whole epoch at once, with 1 and with 2 processes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from tests.helpers.distributed import run_distributed

torchmetrics = pytest.importorskip("torchmetrics")
pytestmark = pytest.mark.timeout(240)
CLASSES = 4


def _data(n=40):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 5, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


class Classifier(TrainModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(5, CLASSES)
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=CLASSES, average="micro")
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=CLASSES, average="micro")
        self.val_metrics = torchmetrics.MetricCollection({
            "f1": torchmetrics.classification.MulticlassF1Score(num_classes=CLASSES, average="macro"),
            "precision": torchmetrics.classification.MulticlassPrecision(num_classes=CLASSES, average="macro")})
        self.val_epochs = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.layer(x)
        self.train_acc(logits, y)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True)
        return torch.nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.layer(x)
        self.val_acc.update(logits, y)
        self.val_metrics.update(logits, y)
        self.log("val/acc", self.val_acc)
        self.log("val", self.val_metrics)

    def on_validation_epoch_end(self):
        self.val_epochs.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _whole_epoch(weight_bias, x, y):
    weight, bias = weight_bias
    logits = x @ weight.T + bias
    acc = torchmetrics.functional.classification.multiclass_accuracy(logits, y, num_classes=CLASSES, average="micro")
    f1 = torchmetrics.functional.classification.multiclass_f1_score(logits, y, num_classes=CLASSES, average="macro")
    return float(acc), float(f1)


def _run(accelerator="cpu"):
    x, y = _data()
    model = Classifier()
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, accelerator=accelerator)
    val = DataLoader(TensorDataset(x[:30], y[:30]), batch_size=4)  # 30 samples: an uneven tail on 2 ranks
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4), val)
    metrics = dict(trainer.callback_metrics)
    weights = (model.layer.weight.detach().clone(), model.layer.bias.detach().clone())
    return metrics, _whole_epoch(weights, x[:30], y[:30]), trainer.world_size


def test_metric_epoch_value_equals_computing_it_on_the_whole_epoch():
    metrics, (acc, f1), _ = _run()
    assert metrics["val/acc"] == pytest.approx(acc, abs=1e-6)
    assert metrics["val/f1"] == pytest.approx(f1, abs=1e-6)
    assert "val/precision" in metrics
    assert 0.0 <= metrics["train/acc_epoch"] <= 1.0 and "train/acc_step" in metrics


def _ddp_worker():
    metrics, whole, world = _run()
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "whole": whole, "world": world}


@pytest.mark.slow
def test_with_two_processes_torchmetrics_synchronises_the_epoch_value():
    ranks = run_distributed(_ddp_worker)
    for rank in ranks:
        assert rank["world"] == 2
        acc, f1 = rank["whole"]
        assert rank["metrics"]["val/acc"] == pytest.approx(acc, abs=1e-6)
        assert rank["metrics"]["val/f1"] == pytest.approx(f1, abs=1e-6)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_step_value_is_the_batch_value_and_epoch_resets():
    class StepOnly(Classifier):
        def __init__(self):
            super().__init__()
            self.steps = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.layer(x)
            batch_acc = self.train_acc(logits, y)
            self.steps.append(float(batch_acc))
            self.log("train/acc", self.train_acc, on_step=True, on_epoch=True)
            return torch.nn.functional.cross_entropy(logits, y)

    x, y = _data(8)
    model = StepOnly()
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      log_every_n_steps=1)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert trainer.callback_metrics["train/acc_step"] == pytest.approx(model.steps[-1])
    # the last epoch's value covers that epoch only (the state was reset after epoch 0)
    assert trainer.callback_metrics["train/acc_epoch"] == pytest.approx(sum(model.steps[2:]) / 2)


def test_a_metric_logged_neither_on_step_nor_on_epoch_is_an_error():
    class Never(Classifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.layer(x)
            self.train_acc(logits, y)
            self.log("acc", self.train_acc, on_step=False, on_epoch=False)
            return torch.nn.functional.cross_entropy(logits, y)

    x, y = _data(8)
    with pytest.raises(ValueError, match=r"self.log\('acc', <MulticlassAccuracy>, on_step=False, on_epoch=False\)"):
        Trainer(max_epochs=1, logger=False, enable_progress_bar=False).fit(Never(), DataLoader(TensorDataset(x, y),
                                                                                                batch_size=4))
