"""The names the documentation's code blocks use without defining: one shared set of fill-ins.

A page's Python blocks are run in order in one namespace that starts as ``fill_ins()``: what a
reader already has in their own project (a model, loaders of their data, an optimizer). Everything a
block teaches it defines itself. The data is small (64 samples of 32 features, a regression target),
so a page runs in seconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import TrainModule

IN_FEATURES = 32


def regression_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    y = x @ torch.randn(IN_FEATURES, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n: int = 64, seed: int = 0, shuffle: bool = False) -> DataLoader:
    return DataLoader(regression_data(n, seed), batch_size=8, shuffle=shuffle)


class Net(TrainModule):
    """The reader's model: a linear regression of the loaders' data, logging train/, val/ and test/loss."""

    def __init__(self, lr: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(IN_FEATURES, 1)

    def forward(self, x):
        return self.layer(x)

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def fill_ins() -> dict[str, Any]:
    """A fresh namespace for one page: new model, optimizer and loaders every time."""
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    train_loader, val_loader, test_loader = loader(shuffle=True), loader(32, seed=1), loader(32, seed=2)
    return {
        "torch": torch, "Net": Net, "model": model, "optimizer": optimizer,
        "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=4),
        "train_loader": train_loader, "val_loader": val_loader, "test_loader": test_loader,
        # the same loaders under the other names the pages use (Lightning's and Accelerate's habits)
        "train_dl": train_loader, "val_dl": val_loader, "train_dataloader": train_loader, "loader": train_loader,
        "num_epochs": 2,
        "TransformerBlock": torch.nn.TransformerEncoderLayer,
    }
