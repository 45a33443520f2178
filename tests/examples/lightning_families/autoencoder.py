"""Autoencoder family, written as a Lightning user writes it: a LightningModule and a LightningDataModule
driven by LightningCLI (run=False), a callback of our own, a monitored ModelCheckpoint, then test and
predict from the best checkpoint.

The data: 8x8 single-channel images, each a random mix of three fixed patterns, so a 3-number code
describes every image exactly and the reconstruction error can fall close to zero.

    python autoencoder.py --trainer.default_root_dir=out --trainer.max_epochs=6

Writes out/result.json (the numbers the test checks) and out/weights.pt (the module's final state).
"""

import json
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from lightning.pytorch import LightningDataModule, LightningModule, callbacks
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

SIDE = 8


class ReconstructionRecorder(callbacks.Callback):
    """After every training epoch: the reconstruction error of a few held-out images, and the validation loss."""

    def __init__(self, num_images: int = 16) -> None:
        super().__init__()
        self.num_images = num_images
        self.errors = []
        self.val_losses = []

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        images, _ = next(iter(DataLoader(trainer.datamodule.val_set, batch_size=self.num_images)))
        flat = images.flatten(1).to(pl_module.device)
        with torch.no_grad():
            pl_module.eval()
            rebuilt = pl_module(flat)
            pl_module.train()
        self.errors.append(F.mse_loss(rebuilt, flat).item())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_losses.append(float(trainer.callback_metrics["val_loss"]))


class LitAutoEncoder(LightningModule):
    def __init__(self, hidden_dim: int = 32, code_dim: int = 3, learning_rate: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(SIDE * SIDE, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, SIDE * SIDE))

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def _reconstruction_loss(self, batch):
        images, _ = batch
        flat = images.flatten(1)
        return F.mse_loss(self(flat), flat)

    def training_step(self, batch, batch_idx):
        loss = self._reconstruction_loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._reconstruction_loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._reconstruction_loss(batch))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        images, _ = batch
        return self(images.flatten(1))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


class PatternDataModule(LightningDataModule):
    def __init__(self, batch_size: int = 32, num_images: int = 512) -> None:
        super().__init__()
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        patterns = torch.randn(3, SIDE * SIDE, generator=g)
        mix = torch.rand(num_images, 3, generator=g)
        images = (mix @ patterns).view(num_images, 1, SIDE, SIDE)
        labels = mix.argmax(dim=1)
        cut = num_images * 3 // 4
        self.test_set = TensorDataset(images[cut:], labels[cut:])
        self.train_set, self.val_set = random_split(TensorDataset(images[:cut], labels[:cut]), [0.75, 0.25],
                                                    generator=torch.Generator().manual_seed(42))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)


def cli_main() -> None:
    recorder = ReconstructionRecorder()
    checkpoint = ModelCheckpoint(monitor="val_loss", filename="{epoch}-{val_loss:.4f}")
    cli = LightningCLI(
        LitAutoEncoder,
        PatternDataModule,
        seed_everything_default=1234,
        run=False,
        trainer_defaults={"callbacks": [recorder, checkpoint], "max_epochs": 6, "logger": False,
                          "accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (test_metrics,) = cli.trainer.test(ckpt_path="best", datamodule=cli.datamodule)
    predictions = cli.trainer.predict(ckpt_path="best", datamodule=cli.datamodule)

    out = cli.trainer.default_root_dir
    torch.save(cli.model.state_dict(), os.path.join(out, "weights.pt"))
    result = {
        "val_losses": recorder.val_losses,
        "reconstruction_errors": recorder.errors,
        "best_model_path": os.path.relpath(checkpoint.best_model_path, out),
        "best_model_score": float(checkpoint.best_model_score),
        "test_loss": float(test_metrics["test_loss"]),
        "predicted_rows": sum(len(p) for p in predictions),
        "prediction_sum": float(sum(p.double().sum() for p in predictions)),
        "global_step": cli.trainer.global_step,
        "config_saved": os.path.exists(os.path.join(out, "config.yaml")),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    cli_main()
