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


class EpochArgScheduler:
    """A scheduler outside torch's API (as timm's): ``step`` needs the epoch; lr = 1 / (1 + epoch)."""

    def __init__(self, optimizer):
        self.optimizer, self.calls = optimizer, []

    def step(self, epoch, metric=None):
        self.calls.append((epoch, metric))
        for group in self.optimizer.param_groups:
            group["lr"] = 1.0 / (1 + epoch)

    def state_dict(self):  # checkpoints keep scheduler states
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_lr_scheduler_step_override_steps_a_scheduler_of_another_api(interval, make_trainer):
    """Lightning's lr_scheduler_step(scheduler, metric) replaces scheduler.step() when the module
    overrides it: a scheduler whose step needs the epoch raised a TypeError before."""

    class Custom(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": EpochArgScheduler(opt), "interval": interval}}

        def lr_scheduler_step(self, scheduler, metric):
            scheduler.step(epoch=self.current_epoch if interval == "epoch" else self.global_step, metric=metric)

    trainer = make_trainer(max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(Custom(), regression_loader(16, 8))
    calls = trainer.lr_scheduler_configs[0].scheduler.calls
    # after each optimizer step (global_step counted) or each epoch (current_epoch counted); no metric
    assert calls == ([(1, None), (2, None), (3, None), (4, None)] if interval == "step" else [(1, None), (2, None)])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1.0 / (1 + calls[-1][0]))


def test_lr_scheduler_step_override_gets_the_monitored_metric_for_reduce_lr_on_plateau(make_trainer):
    seen = []

    class Watched(Plateau):
        def lr_scheduler_step(self, scheduler, metric):
            seen.append((float(metric), float(self.trainer.callback_metrics["val/loss"])))
            super().lr_scheduler_step(scheduler, metric)  # the default: scheduler.step(metric)

    trainer = make_trainer(max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(Watched(), regression_loader(), regression_loader())
    assert len(seen) == 4 and all(metric == logged for metric, logged in seen)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 ** 3)  # as without the override


def test_a_scheduler_without_state_dict_is_refused_before_training(make_trainer):
    class Stateless:  # the first checkpoint would have failed after an epoch of training
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def step(self):
            pass

    class Uses(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": Stateless(opt)}

    model = Uses()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=r"the scheduler Stateless, which has no state_dict\(\) and load_state_dict\(\)"
                                        r".*Define both on Stateless"):
        make_trainer(max_epochs=1).fit(model, regression_loader(8, 8))
    assert all(torch.equal(old, new) for old, new in zip(before, model.parameters()))


def test_configure_gradient_clipping_override_clips_its_own_way(make_trainer):
    """Lightning's configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm) is
    called at each optimizer step with the Trainer's settings, and self.clip_gradients inside it clips."""
    received = []

    class OwnClipping(BoringModel):
        def __init__(self):
            super().__init__(lr=1.0)

        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx) * 1000.0  # large gradients

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            received.append((gradient_clip_val, gradient_clip_algorithm))
            self.clip_gradients(optimizer, gradient_clip_val=0.001, gradient_clip_algorithm="value")

    model = OwnClipping()
    before = [p.detach().clone() for p in model.parameters()]
    make_trainer(max_steps=1, gradient_clip_val=5.0, gradient_clip_algorithm="norm").fit(model, regression_loader(8, 8))
    assert received == [(5.0, "norm")]
    for old, new in zip(before, model.parameters()):  # SGD with lr 1: each entry moved by its clipped gradient
        assert (new.detach() - old).abs().max() <= 0.001 + 1e-7


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
