"""SpikeDetection: a spiking step's update is skipped (a plain PyTorch loop that skips the same step gives the
same weights), N spikes in a row stop training with the steps named and the pre-spike weights, its state
resumes exactly, and on 2 processes a spike on one rank skips the step on both."""

from __future__ import annotations

import pytest
import torch

from trainer import Trainer
from trainer.callbacks import SpikeDetection, TrainingSpikeError
from tests.helpers import BoringModel, RandomRegression, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.models import rank_shard_loader
from tests.helpers.trainers import LEAN


class Spiky(BoringModel):
    """Multiplies the loss of the given batches (global batch counts, from 0) by 1000."""

    def __init__(self, spikes=(), rank=None):
        super().__init__()
        self.spikes, self.rank, self.seen = set(spikes), rank, 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        hit = self.seen in self.spikes and (self.rank is None or self.rank == self.global_rank)
        self.seen += 1
        return loss * 1000 if hit else loss


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _reference(skip: set, steps: int, n: int = 64, batch: int = 8) -> torch.Tensor:
    data, model = RandomRegression(n), BoringModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        start = (step * batch) % n
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(data.x[start:start + batch]), data.y[start:start + batch]).backward()
        if step not in skip:
            opt.step()
    return _weights(model)


def test_a_spike_skips_that_step_only(make_trainer):
    model, detector = Spiky(spikes={6}), SpikeDetection(rtol=2.0)
    trainer = make_trainer(max_epochs=2, callbacks=[detector], **LEAN)
    trainer.fit(model, regression_loader(64, 8))
    assert detector.skipped_steps == [6] and trainer.global_step == 16
    torch.testing.assert_close(_weights(model), _reference({6}, 16), rtol=1e-6, atol=1e-7)


def test_spikes_in_a_row_stop_with_the_steps_named_and_the_weights_before_them(make_trainer):
    model = Spiky(spikes=set(range(5, 100)))
    trainer = make_trainer(max_epochs=3, callbacks=[SpikeDetection(max_consecutive=3)], **LEAN)
    with pytest.raises(TrainingSpikeError, match=r"3 loss spikes in a row, the last at optimizer step 7 \(epoch 0, "
                                                 r"batch_idx 7\).*the updates of steps \[5, 6, 7\] were skipped"):
        trainer.fit(model, regression_loader(64, 8))
    torch.testing.assert_close(_weights(model), _reference(set(range(5, 8)), 8), rtol=1e-6, atol=1e-7)


def test_with_accumulation_the_window_is_one_step(make_trainer):
    model, detector = Spiky(spikes={5}), SpikeDetection()
    make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[detector], **LEAN).fit(
        model, regression_loader(64, 8))
    assert detector.skipped_steps == [2]  # micro-batch 5 lies in the third window


def test_state_resumes_exactly(make_trainer, tmp_path):
    full, detector = Spiky(spikes={3, 11}), SpikeDetection(window=4)
    make_trainer(max_epochs=2, callbacks=[detector], **LEAN).fit(full, regression_loader(64, 8))
    first_detector = SpikeDetection(window=4)
    first = make_trainer(max_steps=6, callbacks=[first_detector], **LEAN)
    first.fit(Spiky(spikes={3}), regression_loader(64, 8))
    first.save_checkpoint(str(tmp_path / "mid.ckpt"))
    resumed, again = Spiky(spikes={11 - 6}), SpikeDetection(window=4)
    make_trainer(max_epochs=2, callbacks=[again], **LEAN).fit(resumed, regression_loader(64, 8),
                                                               ckpt_path=str(tmp_path / "mid.ckpt"))
    assert again.skipped_steps == detector.skipped_steps and {3, 11} <= set(detector.skipped_steps)
    assert torch.equal(_weights(resumed), _weights(full))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"SpikeDetection\(mode='up'\): expected 'min' or 'max'"):
        SpikeDetection(mode="up")
    with pytest.raises(ValueError, match=r"SpikeDetection\(window=0\): expected an int >= 1"):
        SpikeDetection(window=0)
    with pytest.raises(ValueError, match=r"nothing would count as a spike"):
        SpikeDetection(atol=None, rtol=None)


def _ddp_worker():
    model, detector = Spiky(spikes={6}, rank=1), SpikeDetection()
    Trainer(max_epochs=2, accelerator="cpu", strategy="ddp", use_distributed_sampler=False,
            logger=False, enable_progress_bar=False,
            callbacks=[detector], **LEAN).fit(model, rank_shard_loader(128, 4))
    return detector.skipped_steps, _weights(model).tolist()


@pytest.mark.slow
def test_a_spike_on_one_rank_skips_the_step_on_both():
    ranks = run_distributed(_ddp_worker)
    assert ranks[0] == ranks[1] and ranks[0][0] == [6]
    torch.testing.assert_close(torch.tensor(ranks[0][1]), _reference({6}, 32, n=128), rtol=1e-5, atol=1e-6)
