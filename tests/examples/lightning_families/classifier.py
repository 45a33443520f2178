"""Classifier family, written as a Lightning user writes it: a LightningModule around a backbone passed in
(left out of the saved hyperparameters), a plain Trainer with EarlyStopping, a monitored ModelCheckpoint keeping
the two best and a CSVLogger, then test from the best checkpoint, load_from_checkpoint and predict.

The data: 8x8 single-channel images of four classes, each a fixed class pattern plus noise.

    python classifier.py OUT_DIR

Writes OUT_DIR/result.json (the numbers the test checks) and OUT_DIR/weights.pt (the best module's state).
"""

import json
import os
import sys
from typing import Optional

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

SIDE, CLASSES = 8, 4


class Backbone(torch.nn.Module):
    def __init__(self, hidden_dim: int = 32) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(SIDE * SIDE, hidden_dim)
        self.out = torch.nn.Linear(hidden_dim, CLASSES)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.view(x.size(0), -1))))


class LitClassifier(pl.LightningModule):
    def __init__(self, backbone: Optional[Backbone] = None, learning_rate: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone if backbone is not None else Backbone()

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("valid_loss", F.cross_entropy(logits, y), on_step=True)
        self.log("valid_acc", (logits.argmax(dim=1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y))
        self.log("test_acc", (logits.argmax(dim=1) == y).float().mean())

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _ = batch
        return self(x).argmax(dim=1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def make_images(n: int, generator: torch.Generator):
    patterns = torch.randn(CLASSES, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    images = patterns[labels] + 1.5 * torch.randn(n, 1, SIDE, SIDE, generator=generator)
    return TensorDataset(images, labels)


def main(out: str) -> None:
    pl.seed_everything(1234)
    g = torch.Generator().manual_seed(0)
    train, val, test = make_images(256, g), make_images(64, g), make_images(64, g)

    checkpoint = ModelCheckpoint(monitor="valid_loss", save_top_k=2, filename="{epoch}-{valid_loss:.3f}")
    early_stopping = EarlyStopping(monitor="valid_loss", patience=2, min_delta=0.005)
    trainer = pl.Trainer(max_epochs=12, default_root_dir=out, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=4,
                         logger=CSVLogger(save_dir=out, name="lightning_logs"),
                         callbacks=[checkpoint, early_stopping])
    model = LitClassifier(Backbone(hidden_dim=32))
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=32))
    (test_metrics,) = trainer.test(model, DataLoader(test, batch_size=32), ckpt_path="best")

    best = LitClassifier.load_from_checkpoint(checkpoint.best_model_path, backbone=Backbone(hidden_dim=32))
    predictions = torch.cat(trainer.predict(best, DataLoader(test, batch_size=32)))
    torch.save(best.state_dict(), os.path.join(out, "weights.pt"))
    result = {
        "epochs_run": trainer.current_epoch,
        "stopped_epoch": early_stopping.stopped_epoch,
        "best_k_models": sorted(os.path.basename(p) for p in checkpoint.best_k_models),
        "best_model_path": os.path.basename(checkpoint.best_model_path),
        "best_model_score": float(checkpoint.best_model_score),
        "test_loss": float(test_metrics["test_loss"]),
        "test_acc": float(test_metrics["test_acc"]),
        "predicted_acc": float((predictions == test.tensors[1]).float().mean()),
        "hparams": dict(best.hparams),
        "metrics_csv": os.path.relpath(os.path.join(trainer.logger.log_dir, "metrics.csv"), out),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
