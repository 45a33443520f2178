"""The sanity check leaves every random stream as it found it, as Lightning's (it runs under isolate_rng): the
training data's shuffle, dropout masks and any draw of the user's code are those of a run without the check."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import TrainModule


class Recorder(TrainModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []
        self.draws: list[tuple[float, float, float]] = []

    def on_train_epoch_start(self):
        self.draws.append((torch.rand(()).item(), random.random(), float(np.random.rand())))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        self.seen.append(x.flatten().int().tolist())
        return self.layer(x).sum()

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        torch.rand(3), random.random(), np.random.rand()  # a validation step that draws, as dropout would
        self.log("val", self.layer(x).sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(make_trainer, sanity_steps: int) -> Recorder:
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    data = TensorDataset(torch.arange(12.0).unsqueeze(1))
    module = Recorder()
    trainer = make_trainer(max_epochs=2, num_sanity_val_steps=sanity_steps, enable_checkpointing=False)
    trainer.fit(module, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4))
    return module


def test_the_sanity_check_leaves_the_shuffle_and_every_random_stream_untouched(make_trainer):
    without, with_check = _fit(make_trainer, 0), _fit(make_trainer, 2)
    assert with_check.seen == without.seen
    assert with_check.draws == without.draws
    # not vacuous: the validation loader's iterator and steps do draw, so an unisolated check shifts the order
    torch.manual_seed(3)
    iter(DataLoader(TensorDataset(torch.zeros(2)), batch_size=1))
    moved = [int(i) for i in torch.randperm(12)]
    torch.manual_seed(3)
    assert moved != [int(i) for i in torch.randperm(12)]
