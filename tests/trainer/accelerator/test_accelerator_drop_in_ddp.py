"""Accelerate's surface on 2 real gloo processes: the operations in ``trainer.utils``, triggers,
``split_between_processes``, decorators, ``distributed_type``, a prepared scheduler stepped once per
process, the seedable sampler's ``set_epoch``, ``split_batches``, ``join_uneven_inputs`` and evaluation inside training
with ``gather_for_metrics``. One spawn runs every check (each spawn costs seconds)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.distributed import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _operations(accelerator) -> None:
    from trainer.utils import broadcast, gather, gather_object, pad_across_processes, reduce

    rank = accelerator.process_index
    assert accelerator.state.distributed_type.value == "MULTI_CPU" and accelerator.use_distributed
    assert gather_object([rank, "x"]) == [0, "x", 1, "x"] and accelerator.gather_object({"r": rank}) == [{"r": 0},
                                                                                                          {"r": 1}]
    nest = {"a": torch.full((2,), float(rank)), "b": [torch.tensor(rank)]}
    got = broadcast(nest, from_process=1)
    assert got["a"].tolist() == [1.0, 1.0] and got["b"][0].item() == 1
    padded = pad_across_processes(torch.ones(rank + 1, 2), dim=0, pad_index=-1, pad_first=rank == 0)
    assert padded.shape == (2, 2)
    assert padded[:, 0].tolist() == ([-1.0, 1.0] if rank == 0 else [1.0, 1.0])
    assert gather(padded).shape == (4, 2) and gather(torch.tensor(rank)).tolist() == [0, 1]
    assert reduce(torch.tensor([float(rank + 1)]), "mean", scale=2.0).item() == 3.0
    assert accelerator.reduce(torch.tensor([rank + 1.0]), "max").item() == 2.0


def _processes(accelerator) -> None:
    rank = accelerator.process_index
    ran = []
    accelerator.on_last_process(lambda: ran.append("last"))()
    accelerator.on_process(lambda: ran.append("one"), process_index=1)()
    accelerator.on_main_process(lambda: ran.append("main"))()
    assert ran == (["main"] if rank == 0 else ["last", "one"])
    assert not accelerator.check_trigger()
    if rank == 1:
        accelerator.set_trigger()
    assert accelerator.check_trigger()  # every process sees rank 1's flag
    with accelerator.split_between_processes(list(range(5)), apply_padding=True) as share:
        assert share == ([0, 1, 2] if rank == 0 else [3, 4, 4])
    with accelerator.split_between_processes({"p": ["a", "b", "c"]}) as share:
        assert share == ({"p": ["a", "b"]} if rank == 0 else {"p": ["c"]})


def _scheduler(accelerator_cls) -> list[float]:
    """16 samples, batch 2, 2 processes, accumulation 2: 2 optimizer steps per process and epoch; a
    scheduler stepped like Accelerate's counts 2 per optimizer step (one per process)."""
    accelerator = accelerator_cls(cpu=True, gradient_accumulation_steps=2)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    loader = DataLoader(TensorDataset(torch.ones(16, 1)), batch_size=2)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    lrs = []
    for (x,) in loader:
        with accelerator.accumulate(model):
            accelerator.backward(model(x).sum())
            opt.step()
            sched.step()
            opt.zero_grad()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _seedable(accelerator_cls, config_cls) -> None:
    from trainer.utils import set_seed

    set_seed(42)
    accelerator = accelerator_cls(cpu=True, dataloader_config=config_cls(use_seedable_sampler=True))
    loader = accelerator.prepare(DataLoader(TensorDataset(torch.arange(10.0)), batch_size=2, shuffle=True))
    passes = [torch.cat([b[0] for b in loader]).tolist() for _ in range(3)]
    set_seed(42)
    loader.set_epoch(0)
    assert [torch.cat([b[0] for b in loader]).tolist() for _ in range(3)] == passes


def _split_batches(accelerator_cls, config_cls) -> list[float]:
    accelerator = accelerator_cls(cpu=True, dataloader_config=config_cls(split_batches=True))
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 3, generator=g), torch.randn(12, 1, generator=g)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(TensorDataset(x, y), batch_size=4))
    assert len(loader) == 3  # 12 samples in global batches of 4, 2 per process
    for xb, yb in loader:
        accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad()
    return accelerator.unwrap_model(model).weight.flatten().tolist()


def _eval_inside_training(accelerator_cls) -> tuple[list[int], list[float], list[float]]:
    accelerator = accelerator_cls(cpu=True, gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.arange(16.0).unsqueeze(1)
    train = DataLoader(TensorDataset(x, 2 * x), batch_size=1)
    evaluation = DataLoader(TensorDataset(torch.arange(5.0).unsqueeze(1)), batch_size=2)
    model, opt, train, evaluation = accelerator.prepare(model, opt, train, evaluation)
    pattern, seen = [], []
    for i, (xb, yb) in enumerate(train):
        with accelerator.accumulate(model):
            accelerator.backward(((model(xb) - yb) ** 2).mean())
            pattern.append(int(accelerator.sync_gradients))
            opt.step()
            opt.zero_grad()
        if i == 2:  # evaluate in the middle of a window
            for (xe,) in evaluation:
                seen += accelerator.gather_for_metrics(xe).flatten().tolist()
    return pattern, seen, accelerator.unwrap_model(model).weight.flatten().tolist()


def _join(accelerator_cls) -> int:
    """Rank 1 runs one more step than rank 0: without Join its all-reduce would wait forever."""
    accelerator = accelerator_cls(cpu=True)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    steps = 0
    with accelerator.join_uneven_inputs([model]):
        for _ in range(2 + accelerator.process_index):
            accelerator.backward(model(torch.ones(1, 2)).sum())
            opt.step()
            opt.zero_grad()
            steps += 1
    return steps


def _gather_objects(accelerator_cls) -> tuple:
    """Decoded strings, one per sample (an evaluation of generated text): gathered through
    gather_object, in order, the padding repeat of the uneven last batch dropped."""
    accelerator = accelerator_cls(cpu=True)
    texts = [f"text {i}" for i in range(5)]
    loader = accelerator.prepare(DataLoader(texts, batch_size=2))
    seen = []
    for batch in loader:
        seen += accelerator.gather_for_metrics(batch)
    as_objects = accelerator.gather_for_metrics([accelerator.process_index], use_gather_object=True)
    return seen, as_objects, accelerator.gather_for_metrics({"rank": accelerator.process_index})


def _worker() -> dict:
    from trainer import Accelerator, DataLoaderConfiguration

    accelerator = Accelerator(cpu=True)
    _operations(accelerator)
    _processes(accelerator)
    _seedable(Accelerator, DataLoaderConfiguration)
    return {"lrs": _scheduler(Accelerator), "split": _split_batches(Accelerator, DataLoaderConfiguration),
            "eval": _eval_inside_training(Accelerator), "join": _join(Accelerator),
            "objects": _gather_objects(Accelerator)}


def test_accelerates_surface_on_two_processes():
    results = run_distributed(_worker, world_size=2, timeout=240)
    # 4 micro-batches per process, a window of 2: the scheduler steps twice (once per process) per window
    assert results[0]["lrs"] == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 5])
    torch.manual_seed(0)
    reference = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, 3, generator=g), torch.randn(12, 1, generator=g)
    for lo in range(0, 12, 4):  # split_batches: a process's 2 samples of each global batch of 4
        torch.nn.functional.mse_loss(reference(x[lo:lo + 4]), y[lo:lo + 4]).backward()
        opt.step()
        opt.zero_grad()
    assert results[0]["split"] == pytest.approx(reference.weight.flatten().tolist(), abs=1e-6)
    pattern, seen, weight = results[0]["eval"]
    assert pattern == [0, 1] * 4  # the evaluation loop did not reset the window
    assert sorted(seen) == [0.0, 1.0, 2.0, 3.0, 4.0]  # every evaluation sample once, padding dropped
    assert results[1]["eval"][2] == weight
    assert [r["join"] for r in results] == [2, 3]  # uneven step counts under join_uneven_inputs, no hang
    # strings went through gather_object (they were returned ungathered, the padding repeat kept)
    for seen, as_objects, dicts in (r["objects"] for r in results):
        assert seen == [f"text {i}" for i in range(5)]
        assert as_objects == [0, 1] and dicts == [{"rank": 0}, {"rank": 1}]
