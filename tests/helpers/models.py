from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from trainer import TrainModule


class RandomRegression(Dataset):
    """``n`` samples of (x in R^in_dim, y = x @ w + noise), fixed by ``seed``."""

    def __init__(self, n: int = 64, in_dim: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, in_dim, generator=g)
        w = torch.randn(in_dim, 1, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def regression_loader(n: int = 64, batch_size: int = 8, shuffle: bool = False, seed: int = 0, **kw) -> DataLoader:
    return DataLoader(RandomRegression(n, seed=seed), batch_size=batch_size, shuffle=shuffle, **kw)


def rank_shard_loader(n: int = 64, batch_size: int = 8, seed: int = 0) -> DataLoader:
    """This process's share of ``RandomRegression(n)``, dealt round-robin in order (rank r takes samples r,
    r + world_size, ...), for ``Trainer(use_distributed_sampler=False)``: on 2 processes with batch b each step
    takes the samples one process's step of 2b takes from the plain order (the Trainer's own sampler shuffles)."""
    import os

    from torch.utils.data import DistributedSampler

    data = RandomRegression(n, seed=seed)
    sampler = DistributedSampler(data, num_replicas=int(os.environ.get("WORLD_SIZE", "1")),
                                 rank=int(os.environ.get("RANK", "0")), shuffle=False)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


class BoringModel(TrainModule):
    """A linear regression with SGD; logs train/loss and val/loss."""

    def __init__(self, in_dim: int = 4, lr: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(in_dim, 1)
        self.lr = lr

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)
