"""A project written as Lightning's documentation teaches it, with only the import lines changed:
``save_hyperparameters``, the four step methods, ``self.log_dict(..., on_step, on_epoch, prog_bar,
sync_dist)``, ``configure_optimizers`` returning a ReduceLROnPlateau config that monitors
``val_loss``, a DataModule with ``prepare_data`` / ``setup(stage)`` / ``*_dataloader``, and the
callbacks EarlyStopping, ModelCheckpoint(save_top_k=2, filename="{epoch}-{val_loss:.2f}") and
LearningRateMonitor; then ``trainer.test(ckpt_path="best")``, ``load_from_checkpoint`` and
``trainer.predict``.

Every number the run reports is checked against arithmetic done here on the history the model saw:
the epoch means, the early-stopping epoch, the learning rates a plain ReduceLROnPlateau gives for
the same validation losses, the two kept checkpoints, the best score and the test metric of the
best weights.
"""

from __future__ import annotations

import csv
import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

from trainer import DataModule, Trainer, TrainModule, seed_everything
from trainer.callbacks import CSVLogger, EarlyStopping, LearningRateMonitor, ModelCheckpoint

FEATURES, CLASSES = 8, 3


# -- the user's project ---------------------------------------------------------------------------------------

class BlobsDataModule(DataModule):
    def __init__(self, data_dir: str = "./data", batch_size: int = 16, num_samples: int = 120):
        super().__init__()
        self.save_hyperparameters()

    def prepare_data(self):  # "download": write the data set once
        path = os.path.join(self.hparams.data_dir, "blobs.pt")
        if not os.path.exists(path):
            os.makedirs(self.hparams.data_dir, exist_ok=True)
            g = torch.Generator().manual_seed(0)
            centers = 1.5 * torch.randn(CLASSES, FEATURES, generator=g)
            y = torch.randint(0, CLASSES, (self.hparams.num_samples,), generator=g)
            x = centers[y] + torch.randn(self.hparams.num_samples, FEATURES, generator=g)
            torch.save({"x": x, "y": y}, path)

    def setup(self, stage: str):
        data = torch.load(os.path.join(self.hparams.data_dir, "blobs.pt"), weights_only=True)
        if stage == "fit":
            self.train_set, self.val_set = random_split(TensorDataset(data["x"][:80], data["y"][:80]), [60, 20],
                                                        generator=torch.Generator().manual_seed(42))
        if stage in ("test", "predict"):
            self.test_set = TensorDataset(data["x"][80:], data["y"][80:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return DataLoader(TensorDataset(self.test_set.tensors[0]), batch_size=self.hparams.batch_size)


class LitClassifier(TrainModule):
    def __init__(self, hidden_dim: int = 16, learning_rate: float = 0.5, patience: int = 1):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, self.hparams.hidden_dim), torch.nn.ReLU(),
                                       torch.nn.Linear(self.hparams.hidden_dim, CLASSES))
        self.history = {"train": [], "val": []}  # (loss, accuracy, size) per batch, what the test checks

    def forward(self, x):
        return self.net(x)

    def _shared_step(self, batch):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        return loss, acc

    def training_step(self, batch, batch_idx):
        loss, acc = self._shared_step(batch)
        self.history["train"].append((float(loss.detach()), float(acc), len(batch[1]), self.current_epoch))
        self.log_dict({"train_loss": loss, "train_acc": acc}, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, acc = self._shared_step(batch)
        if not self.trainer.sanity_checking:
            self.history["val"].append((float(loss), float(acc), len(batch[1]), self.current_epoch))
        self.log_dict({"val_loss": loss, "val_acc": acc}, on_step=False, on_epoch=True, prog_bar=True,
                      sync_dist=True)

    def test_step(self, batch, batch_idx):
        loss, acc = self._shared_step(batch)
        self.log_dict({"test_loss": loss, "test_acc": acc}, sync_dist=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        (x,) = batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                               patience=self.hparams.patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "val_loss"}}


def main(root: str, max_epochs: int = 12, ckpt_path: str | None = None, evaluate: bool = True):
    seed_everything(5)  # a seed whose run lowers the learning rate before its last epoch (the check below needs it)
    dm = BlobsDataModule(data_dir=os.path.join(root, "data"))
    model = LitClassifier()
    early_stopping = EarlyStopping(monitor="val_loss", mode="min", patience=3, min_delta=0.01)
    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2, filename="{epoch}-{val_loss:.2f}",
                                 save_last=True)
    trainer = Trainer(max_epochs=max_epochs, default_root_dir=root, accelerator="cpu", enable_progress_bar=False,
                      logger=CSVLogger(save_dir=root, name="lit"), log_every_n_steps=1,
                      callbacks=[early_stopping, checkpoint, LearningRateMonitor(logging_interval="epoch")])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    if not evaluate:
        return trainer, model, early_stopping, checkpoint
    fit_metrics = dict(trainer.callback_metrics), dict(trainer.progress_bar_metrics)
    test_results = trainer.test(datamodule=dm, ckpt_path="best")
    best = LitClassifier.load_from_checkpoint(checkpoint.best_model_path)
    predictions = trainer.predict(best, datamodule=dm)
    return trainer, model, dm, early_stopping, checkpoint, fit_metrics, test_results, best, predictions


# -- the checks -----------------------------------------------------------------------------------------------

def _epoch_means(history, epochs):
    """Per epoch: the batch-size-weighted means of loss and accuracy (Lightning's on_epoch reduction)."""
    out = []
    for epoch in range(epochs):
        rows = [r for r in history if r[3] == epoch]
        n = sum(r[2] for r in rows)
        out.append((sum(r[0] * r[2] for r in rows) / n, sum(r[1] * r[2] for r in rows) / n))
    return out


def _early_stopping_epoch(val_losses, patience, min_delta):
    best, wait = float("inf"), 0
    for epoch, loss in enumerate(val_losses):
        if loss < best - min_delta:
            best, wait = loss, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


def _csv_rows(root):
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "lit")) for f in fs
               if f == "metrics.csv"]
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.timeout(120)
def test_lightning_docs_project_runs_unchanged_and_every_reported_number_checks_out(tmp_path):
    root = str(tmp_path)
    trainer, model, dm, early_stopping, checkpoint, fit_metrics, test_results, best, predictions = main(root)

    # early stopping fired at the epoch the patience rule gives for the validation losses seen
    epochs = trainer.current_epoch
    val = _epoch_means(model.history["val"], epochs)
    val_losses = [v[0] for v in val]
    stop = _early_stopping_epoch(val_losses, patience=3, min_delta=0.01)
    assert stop is not None and epochs == stop + 1, (val_losses, epochs)
    assert trainer.should_stop and early_stopping.stopped_epoch == stop

    # on_epoch values are the batch-size-weighted means; the last epoch's are in callback_metrics
    train = _epoch_means(model.history["train"], epochs)
    metrics, progress_bar = fit_metrics
    assert float(metrics["val_loss"]) == pytest.approx(val_losses[-1], rel=1e-5)
    assert float(metrics["val_acc"]) == pytest.approx(val[-1][1], rel=1e-5)
    assert float(metrics["train_loss_epoch"]) == pytest.approx(train[-1][0], rel=1e-5)
    assert float(metrics["train_acc_step"]) == pytest.approx(model.history["train"][-1][1], rel=1e-5)
    assert {"train_loss_step", "train_loss_epoch", "train_acc_epoch", "val_acc"} <= set(progress_bar)
    assert "train_loss" not in progress_bar and metrics["train_loss"] == metrics["train_loss_epoch"]

    # the learning rates a plain ReduceLROnPlateau gives for the same validation losses
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    expected_lrs = [0.5]
    for loss in val_losses[:-1]:
        reference.step(loss)
        expected_lrs.append(opt.param_groups[0]["lr"])
    rows = _csv_rows(root)
    logged_lrs = [float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")]
    assert logged_lrs == pytest.approx(expected_lrs), (logged_lrs, expected_lrs, val_losses)
    assert min(expected_lrs) < 0.5  # the plateau was reached: the check above is not vacuous
    logged_val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert logged_val == pytest.approx(val_losses, rel=1e-5)

    # the two best epochs are kept, named by the template, with the best score and path
    ranked = sorted(range(epochs), key=lambda e: val_losses[e])[:2]
    names = sorted(os.path.basename(p) for p in checkpoint.best_k_models)
    assert names == sorted(f"epoch={e}-val_loss={val_losses[e]:.2f}.ckpt" for e in ranked)
    assert sorted(os.listdir(checkpoint.dirpath)) == sorted(names + ["last.ckpt"])
    assert float(checkpoint.best_model_score) == pytest.approx(val_losses[ranked[0]], rel=1e-5)
    assert os.path.basename(checkpoint.best_model_path) == f"epoch={ranked[0]}-val_loss={val_losses[ranked[0]]:.2f}.ckpt"

    # load_from_checkpoint gives back the hyperparameters and the weights of the best epoch
    assert dict(best.hparams) == {"hidden_dim": 16, "learning_rate": 0.5, "patience": 1}
    saved = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    assert saved.keys() == best.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in best.state_dict().items())
    assert not best.training

    # trainer.test(ckpt_path="best") evaluated those weights
    x, y = dm.test_set.tensors
    with torch.no_grad():
        logits = best(x)
    (result,) = test_results
    assert result["test_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert result["test_acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()), rel=1e-5)

    # predict: one tensor per batch, the best model's probabilities in order
    assert [len(p) for p in predictions] == [16, 16, 8]
    assert torch.allclose(torch.cat(predictions), logits.softmax(-1), atol=1e-6)


@pytest.mark.timeout(120)
def test_lightning_docs_project_stopped_and_resumed_from_last_equals_no_interruption(tmp_path):
    """fit(ckpt_path="last") after a run cut at epoch 3: the ReduceLROnPlateau, EarlyStopping and
    ModelCheckpoint states come back, so the resumed run stops at the same epoch, keeps the same two
    checkpoints and ends on the same weights and learning rate as the uninterrupted run."""
    trainer, model, early_stopping, checkpoint = main(str(tmp_path / "whole"), evaluate=False)
    main(str(tmp_path / "cut"), max_epochs=3, evaluate=False)
    resumed_trainer, resumed, resumed_stopping, resumed_checkpoint = main(str(tmp_path / "cut"), ckpt_path="last",
                                                                         evaluate=False)
    assert resumed_trainer.current_epoch == trainer.current_epoch and trainer.current_epoch > 3
    assert resumed_stopping.stopped_epoch == early_stopping.stopped_epoch
    assert resumed_stopping.wait_count == early_stopping.wait_count
    assert (sorted(map(os.path.basename, resumed_checkpoint.best_k_models))
            == sorted(map(os.path.basename, checkpoint.best_k_models)))
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == trainer.optimizers[0].param_groups[0]["lr"] < 0.5
    for (name, value), (_, resumed_value) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(value, resumed_value), name
