"""Accelerate's documented accumulation for samples of variable size, ported with only the imports
changed: the window's micro-batches are fetched first, the items to learn from (labels other than
-100) are counted and gathered over the processes, each micro-batch's summed loss is multiplied by
``gradient_accumulation_steps * num_processes`` and divided by that count, ``model.no_sync`` skips the
all-reduce on all but the last micro-batch, and ``optimizer.step()`` is called outside
``accumulate()``. On 1 and on 2 processes the update equals one step on the mean loss over every
item of the window, computed in one process."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.distributed import run_distributed

SAMPLES, TOKENS, VOCAB, ACCUMULATION, BATCH, UPDATES = 32, 5, 4, 2, 2, 4


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, TOKENS, 3, generator=g)
    y = torch.randint(0, VOCAB, (SAMPLES, TOKENS), generator=g)
    lengths = torch.randint(1, TOKENS + 1, (SAMPLES,), generator=g)
    y[torch.arange(TOKENS).expand(SAMPLES, TOKENS) >= lengths[:, None]] = -100  # padding: not learned from
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, VOCAB)


def _summed_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="sum")


def _docs_loop() -> list:
    from trainer import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATION)
    x, y = _data()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(TensorDataset(x, y), batch_size=BATCH))
    iterator = iter(loader)
    for _ in range(UPDATES):
        batch_samples = [next(iterator) for _ in range(ACCUMULATION)]
        num_items_in_batch = sum(labels.ne(-100).sum() for _, labels in batch_samples)
        num_items_in_batch = accelerator.gather(num_items_in_batch).sum().item()
        for i, (inputs, labels) in enumerate(batch_samples):
            last = i == len(batch_samples) - 1
            ctx = model.no_sync if not last and accelerator.num_processes > 1 else contextlib.nullcontext
            with ctx():
                loss = _summed_loss(model(inputs), labels)
                loss = loss * ACCUMULATION * accelerator.num_processes / num_items_in_batch
                accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().flatten().tolist() for p in accelerator.unwrap_model(model).parameters()]


def _reference(world_size: int) -> list:
    """One process: each update the mean loss over every item of the window's samples."""
    x, y = _data()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    per_update = ACCUMULATION * BATCH * world_size  # rank r's samples are r, r + 2, ...: the first ones together
    for update in range(UPDATES):
        window = slice(update * per_update, (update + 1) * per_update)
        (_summed_loss(model(x[window]), y[window]) / y[window].ne(-100).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().flatten().tolist() for p in model.parameters()]


def _close(got: list, want: list) -> None:
    for a, b in zip(got, want):
        assert a == pytest.approx(b, abs=1e-6)


def test_docs_item_accumulation_on_one_process_equals_the_mean_over_the_windows_items():
    _close(_docs_loop(), _reference(1))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_docs_item_accumulation_on_two_processes_equals_one_process():
    ranks = run_distributed(_docs_loop, world_size=2, timeout=150)
    assert ranks[0] == ranks[1]
    _close(ranks[0], _reference(2))
