"""LR schedulers count optimizer steps or epochs; ReduceLROnPlateau reads a monitored metric;
a non-finite loss stops training with the step and batch named."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from trainer.callbacks import MissingMetricError
from tests.helpers import BoringModel, regression_loader


class Scheduled(BoringModel):
    def __init__(self, interval, frequency=1):
        super().__init__()
        self.interval, self.frequency = interval, frequency

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 0.5 ** n)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval,
                                                   "frequency": self.frequency}}


@settings(max_examples=15, deadline=None)
@given(n_batches=st.integers(1, 9), k=st.integers(1, 4), epochs=st.integers(1, 3), frequency=st.integers(1, 3),
       interval=st.sampled_from(["step", "epoch"]))
def test_scheduler_steps_per_optimizer_step_or_per_epoch(n_batches, k, epochs, frequency, interval, make_trainer):
    model = Scheduled(interval, frequency)
    trainer = make_trainer(max_epochs=epochs, accumulate_grad_batches=k, num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(n=n_batches * 2, batch_size=2))
    assert trainer.global_step == epochs * -(-n_batches // k)
    count = trainer.global_step if interval == "step" else epochs
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == count // frequency
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 ** (count // frequency))


class Plateau(BoringModel):
    def __init__(self, monitor="val/loss"):
        super().__init__(lr=0.0)  # lr 0: the loss never improves
        self.monitor = monitor

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1.0)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) * 0.0  # keep weights fixed: a plateau


def test_reduce_lr_on_plateau_follows_the_monitored_metric(make_trainer):
    model = Plateau()
    trainer = make_trainer(max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(), regression_loader())
    # epoch 1 sets the best value; epochs 2, 3, 4 see no improvement -> three halvings
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 ** 3)


def test_reduce_lr_on_plateau_with_an_unlogged_metric_lists_the_logged_ones(make_trainer):
    with pytest.raises(MissingMetricError, match=r"monitors 'val/acc', which was not logged.*'train/loss'.*'val/loss'"):
        make_trainer(max_epochs=1, num_sanity_val_steps=0).fit(
            Plateau("val/acc"), regression_loader(), regression_loader())


class NanAt(BoringModel):
    def __init__(self, bad_batch):
        super().__init__()
        self.bad_batch = bad_batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * math.nan if batch_idx == self.bad_batch else loss


@pytest.mark.parametrize("log_every", [1, 50])
def test_non_finite_loss_names_the_step_and_batch(log_every, make_trainer):
    trainer = make_trainer(max_epochs=1, log_every_n_steps=log_every, accumulate_grad_batches=2, num_sanity_val_steps=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at global_step 2, batch_idx 5 \(epoch 0\)"):
        trainer.fit(NanAt(bad_batch=5), regression_loader(n=64, batch_size=4))
    if log_every == 1:  # checked at the next read-back: the step right after
        assert trainer.global_step == 3


def test_non_finite_loss_can_be_allowed(make_trainer):
    trainer = make_trainer(max_epochs=1, stop_on_nonfinite_loss=False, num_sanity_val_steps=0)
    model = NanAt(bad_batch=1)
    trainer.fit(model, regression_loader(n=16, batch_size=4))
    assert trainer.global_step == 4
    assert torch.isnan(model.layer.weight).all()
