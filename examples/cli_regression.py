"""A run driven entirely by a config file (no training script): a small MLP fits a noisy sine wave.

    cd examples && trainer fit --config cli_regression.yaml
    cd examples && trainer fit --config cli_regression.yaml --model.init_args.lr 0.01 --trainer.max_epochs 5
    cd examples && trainer fit --config cli_regression.yaml --print_config

``cli_regression.yaml`` names these classes by ``class_path``; ``trainer fit`` imports them from the current
directory. The data are generated from a fixed seed (nothing is downloaded).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import DataModule, TrainModule


class Regressor(TrainModule):
    """An MLP ``1 -> hidden -> 1`` trained with Adam on the mean squared error."""

    def __init__(self, hidden: int = 32, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class RegressionData(DataModule):
    """``y = sin(3x) + noise`` on [-1, 1]: ``num_samples`` for training, a quarter as many for validation/test."""

    def __init__(self, num_samples: int = 512, batch_size: int = 32, noise: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        self.num_samples, self.batch_size, self.noise, self.seed = num_samples, batch_size, noise, seed

    def _split(self, n: int, offset: int) -> TensorDataset:
        g = torch.Generator().manual_seed(self.seed + offset)
        x = torch.rand(n, 1, generator=g) * 2 - 1
        y = torch.sin(3 * x) + self.noise * torch.randn(n, 1, generator=g)
        return TensorDataset(x, y)

    def train_dataloader(self):
        return DataLoader(self._split(self.num_samples, 0), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self._split(max(self.num_samples // 4, 1), 1), batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self._split(max(self.num_samples // 4, 1), 2), batch_size=self.batch_size)

