"""One step engine behind both doors: the Trainer's loop and the Accelerator's ``accumulate()`` /
``backward()`` / prepared optimizer give the same, exact update -- one big batch of each window's
items -- for uneven batches, short last windows and ``num_items``."""

from __future__ import annotations

import copy

import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from trainer import Accelerator, Trainer
from tests.trainer.test_accumulation import Regression, _data, _reference


def _accelerator_door(model: Regression, x, y, mask, batch: int, k: int, epochs: int, use_num_items: bool):
    layer = copy.deepcopy(model.layer)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=k)
    opt = torch.optim.SGD(layer.parameters(), lr=model.lr)
    layer, opt, loader = accelerator.prepare(layer, opt, DataLoader(TensorDataset(x, y, mask), batch_size=batch))
    steps = 0
    for _ in range(epochs):
        for xb, yb, mb in loader:
            with accelerator.accumulate(layer):
                err = ((layer(xb) - yb) ** 2).sum(dim=1)
                if use_num_items:
                    accelerator.backward((err * mb).sum(), num_items=mb.sum())
                else:
                    accelerator.backward(err.mean())
                steps += accelerator.sync_gradients
                opt.step()
                opt.zero_grad()
    return layer, steps, accelerator


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), batch=st.integers(1, 6), k=st.integers(1, 4), epochs=st.integers(1, 2),
       use_num_items=st.booleans(), mask_p=st.sampled_from([1.0, 0.6]))
def test_both_doors_equal_one_big_batch_and_each_other(n, batch, k, epochs, use_num_items, mask_p):
    x, y, mask = _data(n, seed=n * 7 + batch, mask_p=mask_p if use_num_items else 1.0)
    model = Regression(use_num_items="tensor" if use_num_items else None)
    start = copy.deepcopy(model)
    trainer = Trainer(max_epochs=epochs, accumulate_grad_batches=k, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    trainer.fit(model, DataLoader(TensorDataset(x, y, mask), batch_size=batch))
    layer, steps, accelerator = _accelerator_door(start, x, y, mask, batch, k, epochs, use_num_items)
    reference = _reference(start, x, y, mask, batch, k, epochs, use_mask=use_num_items)

    windows = -(-(-(-n // batch)) // k) * epochs
    assert steps == trainer.global_step == accelerator.engine.progress.global_step == windows
    for got in (model.layer, layer):
        torch.testing.assert_close(got.weight, reference.weight, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got.bias, reference.bias, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.layer.weight, layer.weight, atol=1e-6, rtol=1e-5)


def test_the_trainer_runs_on_its_accelerators_engine():
    trainer = Trainer(max_epochs=1, accumulate_grad_batches=2, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    x, y, mask = _data(10, seed=1)
    trainer.fit(Regression(), DataLoader(TensorDataset(x, y, mask), batch_size=3))
    engine = trainer.accelerator.engine
    assert engine.progress is trainer.state and trainer.global_step == 2
    assert engine.accumulation_steps == 2 and not engine.in_window


def test_a_short_uneven_last_window_is_exact_where_plain_loss_over_k_is_not():
    """4 samples, batch_size=3, accumulation 2: one window of a 3-batch and a 1-batch. The engine
    equals the big batch; Accelerate's loss / k (the reference below) would not."""
    x, y, mask = _data(4, seed=3)
    model = Regression()
    layer, _, _ = _accelerator_door(model, x, y, mask, batch=3, k=2, epochs=1, use_num_items=False)
    reference = _reference(model, x, y, mask, batch=3, k=2, epochs=1, use_mask=False)
    torch.testing.assert_close(layer.weight, reference.weight, atol=1e-7, rtol=1e-6)

    plain = copy.deepcopy(model.layer)
    for lo, hi in ((0, 3), (3, 4)):
        (((plain(x[lo:hi]) - y[lo:hi]) ** 2).sum(dim=1).mean() / 2).backward()
    with torch.no_grad():
        plain.weight -= model.lr * plain.weight.grad
    assert (plain.weight - reference.weight).abs().max() > 1e-3
