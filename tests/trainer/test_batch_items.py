"""Both doors weigh a micro-batch by the same count of items (trainer.step_engine.count_items).

An accumulation window's update equals one big batch of the window's samples, whatever a batch is made
of: a tensor, an (x, y) tuple, a dict, a list of strings, a dataclass. Before the engine owned the count,
the Trainer found no tensor in a batch of strings and weighed every micro-batch as one sample (w=0.0667
where the big batch gives 0.250), while the Accelerator counted the strings.
"""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch.utils.data import DataLoader, Dataset

from trainer import Accelerator, Trainer, TrainModule
from trainer.engine.step_engine import count_items

KINDS = ["tensor", "tuple", "dict", "strings", "dataclass"]
LR = 0.1


@dataclasses.dataclass
class Pair:
    x: torch.Tensor
    y: torch.Tensor


class Numbers(Dataset):
    def __init__(self, n: int, kind: str) -> None:
        self.xs = [0.5 + 0.25 * i for i in range(n)]
        self.kind = kind

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: int):
        x = self.xs[i]
        if self.kind == "tensor":
            return torch.tensor(x)
        if self.kind in ("tuple", "dataclass"):
            return torch.tensor(x), torch.tensor(3 * x)
        if self.kind == "dict":
            return {"x": torch.tensor(x), "y": torch.tensor(3 * x)}
        return f"{x}"


def loader(n: int, batch_size: int, kind: str) -> DataLoader:
    collate = None
    if kind == "dataclass":
        def collate(items):
            xs, ys = zip(*items)
            return Pair(torch.stack(xs), torch.stack(ys))
    elif kind == "strings":
        collate = list
    return DataLoader(Numbers(n, kind), batch_size=batch_size, shuffle=False, collate_fn=collate)


def xy(batch):
    if isinstance(batch, torch.Tensor):
        return batch, 3 * batch
    if isinstance(batch, Pair):
        return batch.x, batch.y
    if isinstance(batch, dict):
        return batch["x"], batch["y"]
    if isinstance(batch[0], str):
        x = torch.tensor([float(s) for s in batch])
        return x, 3 * x
    return batch[0], batch[1]


def loss_of(w: torch.Tensor, batch) -> torch.Tensor:
    x, y = xy(batch)
    return ((w * x - y) ** 2).mean()


def reference(n: int, batch_size: int, k: int) -> float:
    """Plain PyTorch: each window's loss is the mean over all of its samples."""
    w = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([w], lr=LR)
    batches = list(loader(n, batch_size, "tensor"))
    for start in range(0, len(batches), k):
        x = torch.cat(batches[start:start + k])
        loss_of(w, x).backward()
        opt.step()
        opt.zero_grad()
    return float(w.detach())


class Scalar(TrainModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return loss_of(self.w, batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def through_trainer(n: int, batch_size: int, k: int, kind: str) -> float:
    module = Scalar()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(max_epochs=1, accumulate_grad_batches=k, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=tmp).fit(module, loader(n, batch_size, kind))
    return float(module.w.detach())


def through_accelerator(n: int, batch_size: int, k: int, kind: str) -> float:
    accelerator = Accelerator(gradient_accumulation_steps=k)
    w = torch.nn.Parameter(torch.zeros(()))
    model = torch.nn.ParameterList([w])
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt, data = accelerator.prepare(model, opt, loader(n, batch_size, kind))
    for batch in data:
        with accelerator.accumulate(model):
            accelerator.backward(loss_of(model[0], batch))
            opt.step()
            opt.zero_grad()
    return float(accelerator.unwrap_model(model)[0].detach())


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(2, 9), batch_size=st.integers(1, 4), k=st.integers(1, 3))
@example(kind="strings", n=4, batch_size=3, k=2)  # the case: windows of 3 + 1 strings
@example(kind="dataclass", n=7, batch_size=3, k=2)
@example(kind="dict", n=5, batch_size=2, k=3)
def test_both_doors_give_the_big_batch_update_on_every_batch_type(kind, n, batch_size, k):
    expected = reference(n, batch_size, k)
    assert through_trainer(n, batch_size, k, kind) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert through_accelerator(n, batch_size, k, kind) == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("batch, items", [
    (torch.zeros(5, 2), 5),
    ((torch.zeros(3), torch.zeros(3)), 3),
    ({"text": ["a", "b"], "ids": torch.zeros(2, 7)}, 2),
    (["a", "b", "c", "d"], 4),
    ((["a", "b", "c"], [1.0, 2.0, 3.0]), 3),
    (Pair(torch.zeros(6), torch.zeros(6)), 6),
    (torch.tensor(1.0), None),    # no size: weighs as one sample
    ({"note": "x"}, None),
    (torch.zeros(0, 3), 0),       # an empty batch: the Trainer refuses it by name
])
def test_count_items_of_each_batch_shape(batch, items):
    assert count_items(batch) == items
