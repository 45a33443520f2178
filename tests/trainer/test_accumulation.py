"""Accumulation equals the big batch: k micro-batches of b update like one batch of their union,
including the short last window of an epoch and uneven last batches, and with ``num_items``."""

from __future__ import annotations

import copy

import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from trainer.strategies import SingleDeviceStrategy
from trainer import Trainer, TrainModule

SETTINGS = settings(max_examples=20, deadline=None)


class Regression(TrainModule):
    def __init__(self, lr: float = 0.05, use_num_items: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 2)
        self.lr = lr
        self.use_num_items = use_num_items  # None | "int" | "tensor"

    def training_step(self, batch, batch_idx):
        x, y, mask = batch
        err = ((self.layer(x) - y) ** 2).sum(dim=1)  # per-sample loss
        if self.use_num_items is None:
            return err.mean()
        total = (err * mask).sum()
        n = mask.sum()
        return {"loss": total, "num_items": int(n) if self.use_num_items == "int" else n}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _data(n: int, seed: int, mask_p: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = torch.randn(n, 2, generator=g)
    mask = (torch.rand(n, generator=g) < mask_p).float()
    return x, y, mask


def _reference(model: Regression, x, y, mask, batch: int, k: int, epochs: int, use_mask: bool) -> torch.nn.Module:
    """Plain SGD where each step uses the mean loss over every (masked) sample of its window."""
    layer = copy.deepcopy(model.layer)
    opt = torch.optim.SGD(layer.parameters(), lr=model.lr)
    n = len(x)
    starts = list(range(0, n, batch))
    windows = [starts[i:i + k] for i in range(0, len(starts), k)]
    for _ in range(epochs):
        for window in windows:
            lo, hi = window[0], min(window[-1] + batch, n)
            err = ((layer(x[lo:hi]) - y[lo:hi]) ** 2).sum(dim=1)
            m = mask[lo:hi] if use_mask else torch.ones(hi - lo)
            loss = (err * m).sum() / m.sum().clamp_min(1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return layer


def _fit(model, x, y, mask, batch, k, epochs, **kw):
    loader = DataLoader(TensorDataset(x, y, mask), batch_size=batch)
    trainer = Trainer(max_epochs=epochs, accumulate_grad_batches=k, logger=False, enable_progress_bar=False,
                      accelerator="cpu", **kw)
    trainer.fit(model, loader)
    return trainer


@SETTINGS
@given(n=st.integers(1, 40), batch=st.integers(1, 7), k=st.integers(1, 5), epochs=st.integers(1, 2))
def test_accumulation_equals_big_batch_including_short_last_window(n, batch, k, epochs):
    x, y, mask = _data(n, seed=n * 31 + batch)
    model = Regression()
    expected = _reference(model, x, y, mask, batch, k, epochs, use_mask=False)
    trainer = _fit(model, x, y, mask, batch, k, epochs)
    num_batches = -(-n // batch)
    assert trainer.global_step == epochs * -(-num_batches // k)  # optimizer steps, short window included
    torch.testing.assert_close(model.layer.weight, expected.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.layer.bias, expected.bias, atol=1e-5, rtol=1e-5)


@SETTINGS
@given(n=st.integers(2, 40), batch=st.integers(1, 7), k=st.integers(1, 4), kind=st.sampled_from(["int", "tensor"]),
       p=st.sampled_from([0.3, 0.7, 1.0]))
def test_num_items_gives_the_mean_over_every_item_of_the_window(n, batch, k, kind, p):
    x, y, mask = _data(n, seed=n * 7 + batch, mask_p=p)
    model = Regression(use_num_items=kind)
    expected = _reference(model, x, y, mask, batch, k, 1, use_mask=True)
    _fit(model, x, y, mask, batch, k, 1)
    torch.testing.assert_close(model.layer.weight, expected.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.layer.bias, expected.bias, atol=1e-5, rtol=1e-5)


class CountingStrategy(SingleDeviceStrategy):
    """A real single-device strategy that counts the micro-steps run without gradient sync."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.no_sync_calls = 0

    def no_backward_sync(self, module):
        self.no_sync_calls += 1
        return super().no_backward_sync(module)


@SETTINGS
@given(n=st.integers(1, 30), k=st.integers(1, 5))
def test_gradient_sync_is_skipped_on_non_final_micro_steps(n, k):
    x, y, mask = _data(n, seed=n)
    strategy = CountingStrategy()
    trainer = _fit(Regression(), x, y, mask, 1, k, 1, strategy=strategy)
    assert trainer.global_step == -(-n // k)
    assert strategy.no_sync_calls == n - trainer.global_step


def test_skipped_batches_do_not_count_in_the_window():
    """A batch whose training_step returns None contributes nothing; a window of only
    skipped batches does not step the optimizer."""

    class Skipping(Regression):
        def training_step(self, batch, batch_idx):
            return None if batch_idx in (0, 1, 3) else super().training_step(batch, batch_idx)

    x, y, mask = _data(8, seed=3)
    model = Skipping()
    before = copy.deepcopy(model.layer)
    trainer = _fit(model, x, y, mask, 1, 2, 1)
    # windows: (0,1) all skipped -> no step; (2,3) -> step on sample 2 only; (4,5), (6,7) -> steps
    assert trainer.global_step == 3
    ref = Regression()
    ref.layer = before
    opt = torch.optim.SGD(ref.layer.parameters(), lr=ref.lr)
    for window in ([2], [4, 5], [6, 7]):
        loss = ((ref.layer(x[window]) - y[window]) ** 2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(model.layer.weight, ref.layer.weight)
