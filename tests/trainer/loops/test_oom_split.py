"""Trainer(oom_split=True): an out-of-memory micro-batch is trained in pieces, as extra micro-batches
of the same window, with the same update. The error is injected: a module raises
torch.OutOfMemoryError in its forward (or backward) for batches above a size."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from trainer.loops.oom import split_batch

SETTINGS = settings(max_examples=10, deadline=None)


class _OOMInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, limit):
        ctx.too_big = x.shape[0] > limit
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if ctx.too_big:
            raise torch.OutOfMemoryError("injected: out of memory in backward")
        return grad, None


class Net(TrainModule):
    """Raises torch.OutOfMemoryError for a micro-batch of more than ``limit`` samples."""

    def __init__(self, limit: int | None = None, where: str = "forward", use_num_items: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 2)
        self.limit, self.where, self.use_num_items = limit, where, use_num_items
        self.sizes: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["pair"][0]
        self.sizes.append(len(x))
        if self.limit is not None and self.where == "forward" and len(x) > self.limit:
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2.00 GiB")
        h = self.layer(x)
        if self.limit is not None and self.where == "backward":
            h = _OOMInBackward.apply(h, self.limit)
        err = ((h - y) ** 2).sum(dim=1)
        if self.use_num_items:
            return {"loss": err.sum(), "num_items": len(x)}
        return err.mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Nested(torch.utils.data.Dataset):
    """Samples as dicts with a nested tuple, the shapes the splitter must walk."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "pair": (self.y[i], i), "tag": "s"}


def _fit(model, n, batch, k, oom_split=True, epochs=2):
    trainer = Trainer(max_epochs=epochs, accumulate_grad_batches=k, accelerator="cpu", logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, oom_split=oom_split)
    trainer.fit(model, DataLoader(_Nested(n), batch_size=batch))
    return [p.detach().clone() for p in model.parameters()], trainer


@SETTINGS
@given(batch=st.integers(2, 9), k=st.integers(1, 3), n=st.integers(5, 20), limit=st.integers(1, 8),
       where=st.sampled_from(["forward", "backward"]), use_num_items=st.booleans())
def test_split_update_equals_the_unsplit_update(batch, k, n, limit, where, use_num_items):
    want, _ = _fit(Net(use_num_items=use_num_items), n, batch, k, oom_split=False)
    model = Net(limit, where, use_num_items)
    got, trainer = _fit(model, n, batch, k)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert max(model.sizes) <= max(batch, limit) and trainer.global_step > 0
    if min(batch, n) > limit:  # the size that worked is remembered: after the first batch, nothing fails again
        assert trainer.fit_loop.oom_splitter.piece <= limit


def test_uneven_halves_and_one_notice(caplog):
    model = Net(limit=3)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        _fit(model, n=14, batch=7, k=2)
    # 7 fails, halves 4 + 3; 4 fails, halves 2 + 2; the queued 3 goes 2 + 1; the next 7 goes 2+2+2+1 up front
    assert model.sizes[:10] == [7, 4, 2, 2, 2, 1, 2, 2, 2, 1]
    notices = [r.getMessage() for r in caplog.records if "oom_split" in r.getMessage()]
    assert notices == ["oom_split: micro-batch 7 did not fit; training on 4 x 2 (the last 1), same update. "
                       "Later batches are split up front."]


def test_without_oom_split_the_error_ends_the_run():
    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        _fit(Net(limit=3), n=8, batch=4, k=1, oom_split=False)


def test_one_sample_that_does_not_fit_names_the_memory():
    with pytest.raises(RuntimeError, match=r"one sample does not fit in memory \(the model has 8 parameters"):
        _fit(Net(limit=0), n=4, batch=4, k=1)


def test_other_errors_pass_through_unchanged():
    class Broken(Net):
        def training_step(self, batch, batch_idx):
            raise KeyError("not memory")

    with pytest.raises(KeyError, match="not memory"):
        _fit(Broken(), n=4, batch=4, k=1)


def test_backward_oom_after_earlier_gradients_of_the_window_is_refused():
    model = Net(limit=4, where="backward")
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    batches = [{"x": x[:2], "pair": (y[:2], 0)}, {"x": x[2:], "pair": (y[2:], 0)}]  # 2 fit, then 6 fails
    trainer = Trainer(max_epochs=1, accumulate_grad_batches=2, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, oom_split=True)
    with pytest.raises(RuntimeError, match="in its backward, after earlier micro-batches of the same accumulation"):
        trainer.fit(model, batches)


def test_a_batch_it_cannot_split_is_an_error_naming_it():
    model = Net(limit=2)
    bad = [{"x": torch.randn(4, 3), "pair": (torch.randn(3, 2), 0)}]
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      oom_split=True)
    with pytest.raises(TypeError, match=r"batch\['pair'\]\[0\] has shape \(3, 2\), but the batch has 4 samples"):
        trainer.fit(model, bad)


def test_a_batch_without_tensors_is_an_error_naming_its_type():
    class Words(TrainModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            raise torch.OutOfMemoryError("injected")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      oom_split=True)
    with pytest.raises(TypeError, match="a batch of type list ran out of memory, and it holds no tensor"):
        trainer.fit(Words(), [["a", "b"]])


def test_split_batch_walks_nested_structures():
    batch = {"x": torch.arange(5), "pair": (torch.ones(5, 2), 7), "tag": "s", "scalar": torch.tensor(3.0)}
    piece = split_batch(batch, 5, 3, 5)
    assert piece["x"].tolist() == [3, 4] and piece["pair"][0].shape == (2, 2) and piece["pair"][1] == 7
    assert piece["tag"] == "s" and piece["scalar"].item() == 3.0


@pytest.mark.parametrize("strategy", ["deepspeed", "fsdp"])
def test_strategies_that_cannot_split_refuse_before_training(strategy):
    match = "DeepSpeed scales the loss" if strategy == "deepspeed" else "FSDP gathers parameters"
    with pytest.raises(ValueError, match=rf"Trainer\(oom_split=True\) with \w+Strategy: {match}"):
        Trainer(strategy=strategy, accelerator="cpu", devices=2, oom_split=True, logger=False)


def test_oom_split_must_be_a_bool():
    with pytest.raises(TypeError, match=r"Trainer\(oom_split='yes'\): expected True or False"):
        Trainer(oom_split="yes")
