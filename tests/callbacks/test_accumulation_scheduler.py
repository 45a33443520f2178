"""GradientAccumulationScheduler: each epoch's accumulation is exact (a plain PyTorch loop with the same
windows gives the same weights), it resumes exactly, it runs on 2 processes, and it is refused where
Lightning refuses it."""

from __future__ import annotations

import pytest
import torch

from trainer import Trainer
from trainer.callbacks import GradientAccumulationScheduler, LambdaCallback
from tests.helpers import BoringModel, RandomRegression, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.models import rank_shard_loader
from tests.helpers.trainers import LEAN

SCHEDULE = {1: 2, 2: 3}  # epoch 0: 1, epoch 1: 2, epoch 2: 3 (a short last window: 7 batches)


def _reference(schedule: dict[int, int], epochs: int, n: int = 56, batch: int = 8) -> torch.Tensor:
    """Plain PyTorch: each window's gradient is the mean over its samples, one SGD step per window."""
    data = RandomRegression(n)
    model = BoringModel()
    opt = torch.optim.SGD(model.parameters(), lr=model.lr)
    for epoch in range(epochs):
        k = [v for e, v in sorted({0: 1, **schedule}.items()) if e <= epoch][-1]
        for start in range(0, n, k * batch):
            x, y = data.x[start:start + k * batch], data.y[start:start + k * batch]
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_each_epoch_accumulates_its_scheduled_batches_exactly(make_trainer):
    seen = []
    record = LambdaCallback(on_train_epoch_end=lambda t, m: seen.append((t.accumulate_grad_batches, t.global_step)))
    model = BoringModel()
    trainer = make_trainer(max_epochs=3, callbacks=[GradientAccumulationScheduler(SCHEDULE), record], **LEAN)
    trainer.fit(model, regression_loader(56, 8))
    assert seen == [(1, 7), (2, 11), (3, 14)]  # 7 steps, then ceil(7/2)=4, then ceil(7/3)=3
    torch.testing.assert_close(_weights(model), _reference(SCHEDULE, 3), rtol=1e-6, atol=1e-6)


def test_schedule_lookup_and_the_implicit_first_epoch():
    cb = GradientAccumulationScheduler({2: 4, 5: 2})
    assert [cb.get_accumulate_grad_batches(e) for e in range(7)] == [1, 1, 4, 4, 4, 2, 2]


def test_resumed_inside_an_epoch_ends_on_the_uninterrupted_weights(make_trainer, tmp_path):
    full = BoringModel()
    make_trainer(max_epochs=3, callbacks=[GradientAccumulationScheduler(SCHEDULE)], **LEAN).fit(
        full, regression_loader(56, 8))
    first = make_trainer(max_steps=9, callbacks=[GradientAccumulationScheduler(SCHEDULE)], **LEAN)
    first.fit(BoringModel(), regression_loader(56, 8))  # stops inside epoch 1 (k=2), at a window's end
    assert first.current_epoch == 1 and first.accumulate_grad_batches == 2
    first.save_checkpoint(str(tmp_path / "mid.ckpt"))
    resumed = BoringModel(seed=1)
    make_trainer(max_epochs=3, callbacks=[GradientAccumulationScheduler(SCHEDULE)], **LEAN).fit(
        resumed, regression_loader(56, 8), ckpt_path=str(tmp_path / "mid.ckpt"))
    assert torch.equal(_weights(resumed), _weights(full))


def test_refused_with_trainer_accumulation_with_manual_optimization_and_with_deepspeed(make_trainer):
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[GradientAccumulationScheduler({0: 2})],
                           **LEAN)
    with pytest.raises(ValueError, match=r"Trainer\(accumulate_grad_batches=2\) together with GradientAccumulation"):
        trainer.fit(BoringModel(), regression_loader(16, 8))

    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()

    trainer = make_trainer(max_epochs=1, callbacks=[GradientAccumulationScheduler({0: 2})], **LEAN)
    with pytest.raises(ValueError, match="GradientAccumulationScheduler with manual optimization"):
        trainer.fit(Manual(), regression_loader(16, 8))
    pytest.importorskip("deepspeed")
    trainer = make_trainer(max_epochs=1, strategy="deepspeed")
    with pytest.raises(ValueError, match="with DeepSpeedStrategy: DeepSpeed's engine is built with a fixed gradient_"):
        trainer.fit_loop.set_accumulate_grad_batches(2)


def test_bad_schedules_are_refused():
    with pytest.raises(TypeError, match=r"expected a non-empty dict"):
        GradientAccumulationScheduler({})
    with pytest.raises(ValueError, match=r"the key -1 is not an epoch"):
        GradientAccumulationScheduler({-1: 2})
    with pytest.raises(ValueError, match=r"epoch 1 has 0 micro-batches per step; expected an int >= 1"):
        GradientAccumulationScheduler({1: 0})


def test_the_loop_refuses_a_change_inside_a_window(make_trainer):
    def change(trainer, module, batch, batch_idx):
        if batch_idx == 1:
            trainer.fit_loop.set_accumulate_grad_batches(3)

    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2,
                           callbacks=[LambdaCallback(on_train_batch_start=change)], **LEAN)
    with pytest.raises(RuntimeError, match=r"set_accumulate_grad_batches\(3\) inside an accumulation window"):
        trainer.fit(BoringModel(), regression_loader(32, 8))


def _ddp_worker():
    model = BoringModel()
    Trainer(max_epochs=3, accelerator="cpu", strategy="ddp", use_distributed_sampler=False,
            logger=False, enable_progress_bar=False,
            callbacks=[GradientAccumulationScheduler(SCHEDULE)], **LEAN).fit(model, rank_shard_loader(112, 4))
    return _weights(model).tolist()


@pytest.mark.slow
def test_two_processes_give_the_one_process_update():
    """2 processes x batch 4 (28 batches each: the sampler deals samples round-robin) equal one process
    x batch 8 on the same 112 samples with the same schedule."""
    ranks = run_distributed(_ddp_worker)
    assert ranks[0] == ranks[1]
    torch.testing.assert_close(torch.tensor(ranks[0]), _reference(SCHEDULE, 3, n=112), rtol=1e-5, atol=1e-6)
