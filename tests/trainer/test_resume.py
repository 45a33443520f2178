"""Resume equals no interruption: bit-exact weights on CPU, wherever the interruption lands
(mid-epoch included), with shuffling, dropout, python/numpy randomness, accumulation,
schedulers and callback state."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
from trainer import Trainer, TrainModule, seed_everything


class Noisy(TrainModule):
    """Uses every RNG the checkpoint must restore: torch (dropout, init), python and numpy."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        jitter = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        loss = torch.nn.functional.mse_loss(self.net(x), y) * jitter
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loaders(shuffle: bool, n: int = 40, batch: int = 4):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True)
    train = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle)
    val = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=4)
    return train, val


class Crash(Exception):
    pass


class CrashAfterStep(Callback):
    """Saves a checkpoint after optimizer step ``step`` and dies, like a kill right after a save."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not trainer.is_accumulating:
            trainer.save_checkpoint(self.path)
            raise Crash()


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 3), shuffle=st.booleans(), crash_at=st.integers(1, 14), epochs=st.integers(1, 3))
def test_resume_anywhere_gives_the_uninterrupted_weights(tmp_path_factory, make_trainer, k, shuffle, crash_at, epochs):
    def trainer_with(*extra: Callback) -> Trainer:  # the same run each time; extra: a callback that crashes it
        return make_trainer(max_epochs=epochs, accumulate_grad_batches=k, enable_checkpointing=False,
                            val_check_interval=0.5, callbacks=[EarlyStopping("val/loss", patience=100), *extra])

    tmp = tmp_path_factory.mktemp("resume")
    seed_everything(0)
    model = Noisy()
    reference = trainer_with()
    reference.fit(model, *_loaders(shuffle))
    expected = _weights(model)
    total_steps = reference.global_step

    seed_everything(0)
    path = str(tmp / "crash.ckpt")
    first = trainer_with(CrashAfterStep(crash_at, path))
    crashed = False
    try:
        first.fit(Noisy(), *_loaders(shuffle))
    except Crash:
        crashed = True
    assert crashed == (crash_at <= total_steps)

    seed_everything(12345)  # every RNG must come from the checkpoint, not from here
    resumed_model = Noisy()
    resumed = trainer_with()
    resumed.fit(resumed_model, *_loaders(shuffle), ckpt_path=path if crashed else None)
    if not crashed:
        return
    assert resumed.global_step == total_steps
    for got, want in zip(_weights(resumed_model), expected):
        assert torch.equal(got, want)
    # logged epoch values and the early-stopping state continue as if nothing happened
    assert resumed.callback_metrics["train/loss_epoch"] == reference.callback_metrics["train/loss_epoch"]
    assert resumed.callbacks[0].state_dict() == reference.callbacks[0].state_dict()


def test_top_k_bookkeeping_survives_resume(tmp_path):
    def run(callbacks, ckpt_path=None):
        seed_everything(0)
        ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), monitor="val/loss", save_top_k=2, save_last=True,
                               filename="epoch={epoch}-{val/loss:.4f}")
        trainer = Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                          callbacks=[ckpt, *callbacks])
        model = Noisy()
        try:
            trainer.fit(model, *_loaders(True), ckpt_path=ckpt_path)
        except Crash:
            pass
        return ckpt, model

    reference, ref_model = run([])
    ref_files = sorted(os.listdir(tmp_path / "ckpts"))
    ref_state = reference.state_dict()
    for name in os.listdir(tmp_path / "ckpts"):
        os.remove(tmp_path / "ckpts" / name)

    run([CrashAfterStep(23, str(tmp_path / "ckpts" / "last.ckpt"))])  # epoch 2 of 4 (10 steps an epoch)
    resumed, model = run([], ckpt_path="last")
    assert sorted(os.listdir(tmp_path / "ckpts")) == ref_files
    assert resumed.state_dict() == ref_state
    assert len(resumed.best_k_models) == 2 and resumed.best_model_path in resumed.best_k_models
    for got, want in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(got, want)


def test_last_with_no_checkpoint_starts_fresh_and_says_so(tmp_path, capsys):
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      default_root_dir=str(tmp_path))
    trainer.fit(Noisy(), *_loaders(False), ckpt_path="last")
    assert "no checkpoint found" in capsys.readouterr().out
    assert trainer.global_step == 10
    # the same command again now resumes from the end: nothing left to train
    again = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                    default_root_dir=str(tmp_path))
    again.fit(Noisy(), *_loaders(False), ckpt_path="last")
    assert again.global_step == 10 and again.current_epoch == 1
    assert "Resuming from" in capsys.readouterr().out


def test_max_steps_stop_inside_an_epoch_then_continue(tmp_path):
    """fit(max_steps=3) leaves epoch 0 open; a later fit with more steps resumes inside it."""
    seed_everything(0)
    model = Noisy()
    Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_checkpointing=False).fit(model, *_loaders(True))
    expected = _weights(model)

    seed_everything(0)
    first = Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                    default_root_dir=str(tmp_path))
    first.fit(Noisy(), *_loaders(True))
    assert (first.current_epoch, first.state.batch_idx) == (0, 3)
    assert os.path.exists(first.checkpoint_callback.best_model_path)
    seed_everything(99)
    second_model = Noisy()
    Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False,
            default_root_dir=str(tmp_path)).fit(second_model, *_loaders(True), ckpt_path="last")
    for got, want in zip(_weights(second_model), expected):
        assert torch.equal(got, want)
