"""A checkpoint saved inside an epoch by N processes resumes on M: the rest of the epoch's order is
re-dealt over the new processes, every remaining sample trained exactly once (trainer/data/reshard.py).

The reference for the weights: one process that trains, optimizer step by optimizer step, the same
global batches -- each the union of what every rank trained in that step's accumulation window --
with the mean loss over that global batch (SGD, fp32; DDP's float sums differ in order, so 1e-6).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, TensorDataset

from trainer import TrainModule, seed_everything
from trainer.data.data_position import capture_epoch_start
from trainer.data.reshard import check_weighting, deal, distributed_order, loss_shares, replayed_order
from trainer.strategies.checkpoint_io import CheckpointError, atomic_save, safe_load
from tests.helpers.distributed import run_distributed
from tests.helpers.trainers import quiet_trainer

N_SAMPLES, BATCH, SEED = 23, 3, 5


# -- the arithmetic --------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), saved_world=st.integers(1, 4), world=st.integers(1, 4), batch=st.integers(1, 5),
       new_batch=st.integers(1, 5), drop_last=st.booleans(), shuffle=st.booleans(), k=st.integers(1, 3),
       position=st.floats(0, 1, exclude_max=True), data=st.data())
def test_every_remaining_sample_is_trained_exactly_once(n, saved_world, world, batch, new_batch, drop_last, shuffle,
                                                        k, position, data):
    order = distributed_order(n, saved_world, batch, drop_last, shuffle, seed=3, epoch=1)
    steps_per_rank = len(order) and -(-len(order) // (batch * saved_world))  # the saved run's steps (upper bound)
    if steps_per_rank < 2:
        return  # no position inside the epoch
    done = 1 + int(position * (steps_per_rank - 1))  # steps the saved run finished, 1 .. last-1
    consumed = done * batch * saved_world
    if consumed >= len(order):
        return
    remaining = order[consumed:]
    if len(remaining) < world:
        with pytest.raises(CheckpointError, match=r"only \d+ sample\(s\) of the epoch remain, fewer than"):
            deal(remaining, world, new_batch)
        return
    steps = deal(remaining, world, new_batch)
    trained = [i for step in steps for batch_ in step for i in batch_]
    assert sorted(trained) == sorted(remaining)  # each remaining sample once, nothing else
    assert len(set(order)) == len(order)  # the saved run's padding repeats are not trained again
    assert all(len(b) >= 1 for step in steps for b in step)  # every rank has a sample at every step
    assert all(max(map(len, step)) - min(map(len, step)) <= 1 for step in steps)
    # the steps are consecutive global batches of the remaining order, each cut in consecutive runs
    assert [i for step in steps for batch_ in step for i in batch_] == remaining
    if world == saved_world and new_batch == batch:  # the same processes: the original batches
        original = [order[j:j + batch] for j in range(consumed, len(order), batch)]
        assert [b for step in steps[:-1] for b in step] == original[:world * (len(steps) - 1)]
    # weighting: the average over ranks of share x local mean is the mean over the window's items
    values = {i: float(data.draw(st.integers(-9, 9))) for i in remaining}
    shares = [loss_shares(steps, r, k) for r in range(world)]
    for start in range(0, len(steps), k):
        window = steps[start:start + k]
        local = [[values[i] for step in window for i in step[r]] for r in range(world)]
        averaged = sum(shares[r][start] * sum(v) / len(v) for r, v in enumerate(local)) / world
        everything = [v for vs in local for v in vs]
        assert averaged == pytest.approx(sum(everything) / len(everything), abs=1e-9)
        assert all(shares[r][start] == 1.0 for r in range(world)) or len({len(v) for v in local}) > 1


def test_manual_optimization_with_an_uneven_last_batch_is_refused():
    class Manual(Indexed):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    steps = deal(list(range(7)), world_size=2, batch_size=2)  # 4 + 3: the last step is 2 + 1
    shares = loss_shares(steps, rank=0, accumulation=1)
    assert shares == [1.0, 2 * 2 / 3]
    check_weighting(Indexed(), shares)  # the loop weights automatic optimization's loss
    with pytest.raises(CheckpointError, match=r"split unevenly between the processes and Manual uses manual "
                                              r"optimization, whose backward the loop cannot weight"):
        check_weighting(Manual(), shares)
    check_weighting(Manual(), loss_shares(deal(list(range(8)), 2, 2), 0, 1))  # even: nothing to weight


def test_one_process_order_is_replayed_from_the_epoch_start_states():
    loader = DataLoader(list(range(17)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    start = capture_epoch_start(loader)
    read = [int(i) for batch in loader for i in batch]
    before = torch.get_rng_state()
    assert replayed_order(17, 4, False, True, loader.generator, start) == read
    assert torch.equal(torch.get_rng_state(), before)  # the random states are put back
    global_rng = DataLoader(list(range(17)), batch_size=4, shuffle=True)
    start = capture_epoch_start(global_rng)
    read = [int(i) for batch in global_rng for i in batch]
    assert replayed_order(17, 4, False, True, None, start) == read


# -- refusals where the rest cannot be re-dealt exactly -------------------------------------------

class Indexed(TrainModule):
    """A linear model on (x, y, index) batches; records the indices each step trained."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen.append(index.tolist())
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n=N_SAMPLES):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g), torch.arange(n))


def _saved_by_two(tmp_path, **loops) -> str:
    """A mid-epoch checkpoint of one process, relabelled as written by two."""
    seed_everything(SEED)
    trainer = quiet_trainer(max_epochs=1, max_steps=2, enable_checkpointing=False)
    trainer.fit(Indexed(), DataLoader(_data(), batch_size=BATCH, shuffle=True))
    path = str(tmp_path / "mid.ckpt")
    trainer.save_checkpoint(path)
    content = safe_load(path)
    content["metadata"]["world_size"] = 2
    content["loops"].update(loops)
    atomic_save(content, path)
    return path


class Stream(IterableDataset):
    def __iter__(self):
        data = _data()
        return iter([data[i] for i in range(len(data))])


class EveryOther(torch.utils.data.Sampler):
    def __iter__(self):
        return iter(range(0, N_SAMPLES, 2))

    def __len__(self):
        return (N_SAMPLES + 1) // 2


@pytest.mark.parametrize("loader, kw, reason", [
    (lambda: DataLoader(Stream(), batch_size=BATCH), {}, r"Stream, whose order cannot be replayed by index"),
    (lambda: DataLoader(_data(), batch_size=BATCH, sampler=EveryOther()), {}, r"sampler=EveryOther\(\.\.\.\)"),
    (lambda: DataLoader(_data(), batch_size=BATCH, sampler=RandomSampler(_data(), replacement=True)), {},
     r"sampler=RandomSampler\(\.\.\.\), whose order this library cannot rebuild"),
    (lambda: DataLoader(_data(), batch_size=BATCH, shuffle=True), {"limit_train_batches": 5},
     r"limit_train_batches/overfit_batches cut the epoch"),
    (lambda: DataLoader(_data(), batch_size=BATCH, shuffle=True), {"use_distributed_sampler": False},
     r"use_distributed_sampler=False"),
])
def test_a_rest_that_cannot_be_redealt_is_refused_with_the_reason(tmp_path, loader, kw, reason):
    path = _saved_by_two(tmp_path)
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, **kw)
    model = Indexed()
    with pytest.raises(CheckpointError, match=r"middle of epoch 0 by 2 process\(es\); this run has 1, and the rest "
                                              r"of the epoch cannot be re-dealt exactly: .*" + reason +
                                              r".*Resume with 2 process\(es\), or from a checkpoint taken at an "
                                              r"epoch end"):
        trainer.fit(model, loader(), ckpt_path=path)
    assert model.seen == []  # refused before any training


def test_relabelled_two_process_checkpoint_resumes_with_the_rest_of_the_two_process_order(tmp_path):
    """One process continues a (relabelled) two-process epoch: the samples the two-process order holds
    after the four it trained, each once, in that order (fast; the real two-process runs are below)."""
    path = _saved_by_two(tmp_path)
    model = Indexed()
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False)
    trainer.fit(model, DataLoader(_data(), batch_size=BATCH, shuffle=True), ckpt_path=path)
    order = _sampler_order(world=2)
    assert [i for b in model.seen for i in b] == order[2 * BATCH * 2:]
    assert trainer.global_step == 2 + -(-(N_SAMPLES - 12) // BATCH)



def test_a_checkpoint_inside_a_redealt_epoch_resumes_it_exactly(tmp_path):
    """Saved again inside the re-dealt rest, resumed: the same samples and weights as without that stop."""
    path = _saved_by_two(tmp_path)
    loader = lambda: DataLoader(_data(), batch_size=BATCH, shuffle=True)  # noqa: E731
    straight = Indexed()
    quiet_trainer(max_epochs=1, enable_checkpointing=False).fit(straight, loader(), ckpt_path=path)
    first = Indexed()
    trainer = quiet_trainer(max_epochs=1, max_steps=4, enable_checkpointing=False)
    trainer.fit(first, loader(), ckpt_path=path)
    again = str(tmp_path / "again.ckpt")
    trainer.save_checkpoint(again)
    assert safe_load(again)["loops"]["epoch_order"] == {"world_size": 2, "batch_size": BATCH, "seed": SEED,
                                                       "consumed": 12 + 2 * BATCH}
    second = Indexed()
    quiet_trainer(max_epochs=1, enable_checkpointing=False).fit(second, loader(), ckpt_path=again)
    assert first.seen + second.seen == straight.seen
    for a, b in zip(second.parameters(), straight.parameters()):
        assert torch.equal(a, b)

def _sampler_order(world):
    """The epoch-0 order of DistributedSampler over ``world`` processes with SEED, step by step
    (torch's documented algorithm: randperm seeded by seed + epoch, padded, sample i to rank i % world)."""
    perm = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(SEED)).tolist()
    padded = perm + perm[:-N_SAMPLES % world]
    ranks = [padded[r::world] for r in range(world)]
    order = [i for j in range(0, len(ranks[0]), BATCH) for rank in ranks for i in rank[j:j + BATCH]]
    return [i for n, i in enumerate(order) if i not in order[:n]]


# -- real two-process runs: 2 -> 1 and 1 -> 2 -------------------------------------------------------

def _fit(world_size=1, max_steps=-1, ckpt_path=None, save_to=None, accumulate=1, shuffle=True, scheduled=False):
    """Train Indexed for (part of) epoch 0; returns the indices of each step and the weights. ``scheduled``:
    the accumulation comes from a GradientAccumulationScheduler (set in on_train_epoch_start)."""
    from trainer.callbacks import GradientAccumulationScheduler

    seed_everything(SEED)
    model = Indexed()
    trainer = quiet_trainer(max_epochs=1, max_steps=max_steps, enable_checkpointing=False,
                            accumulate_grad_batches=1 if scheduled else accumulate, num_sanity_val_steps=0,
                            callbacks=[GradientAccumulationScheduler({0: accumulate})] if scheduled else None,
                            strategy="ddp" if world_size > 1 else "auto")
    trainer.fit(model, DataLoader(_data(), batch_size=BATCH, shuffle=shuffle), ckpt_path=ckpt_path)
    if save_to:
        trainer.save_checkpoint(save_to)
    return {"seen": model.seen, "step": trainer.global_step,
            "weights": [p.detach().flatten().tolist() for p in model.parameters()]}


def _reference(windows):
    """One process, SGD on the mean loss over each window's samples (the union of every rank's)."""
    seed_everything(SEED)
    model = Indexed()
    opt = model.configure_optimizers()
    x, y, _ = _data().tensors
    for window in windows:
        index = torch.tensor(window)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model.layer(x[index]), y[index]).backward()
        opt.step()
    return model


def _windows(ranks_seen, accumulate):
    """Every optimizer step's samples: each rank's micro-batches ``accumulate`` at a time, joined."""
    steps = list(zip(*ranks_seen))
    return [[i for step in steps[s:s + accumulate] for batch in step for i in batch]
            for s in range(0, len(steps), accumulate)]


def _assert_weights(model, weights):
    for p, w in zip(model.parameters(), weights):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(w), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_saved_inside_the_epoch_resume_on_one(tmp_path):
    path = str(tmp_path / "mid.ckpt")
    before = run_distributed(_fit, world_size=2, max_steps=2, save_to=path)
    assert safe_load(path)["metadata"]["world_size"] == 2 and safe_load(path)["loops"]["batch_idx"] == 2
    after = _fit(ckpt_path=path)
    order = _sampler_order(world=2)
    trained = [i for step in zip(*(r["seen"] for r in before)) for b in step for i in b]
    assert trained == order[:12]  # 2 steps x 2 processes x 3
    assert [i for b in after["seen"] for i in b] == order[12:]  # then the rest of that order, on one process
    assert sorted(trained + order[12:]) == list(range(N_SAMPLES))  # each sample once (no padding repeat)
    assert after["step"] == 2 + 4  # 11 samples left: 4 steps of up to 3
    model = _reference(_windows([r["seen"] for r in before], 1) + _windows([after["seen"]], 1))
    _assert_weights(model, after["weights"])


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("saved_steps, shapes, steps_after, scheduled", [
    (1, [[3, 3], [3, 3], [3, 2]], 2, False),  # the uneven 3 + 2 closes a window of its own
    (2, [[3, 3], [3, 2]], 1, False),  # 3 + 3 then 3 + 2 in one window: per-rank corrections after DDP's average diverged
    # the accumulation set by a GradientAccumulationScheduler in on_train_epoch_start, after the rest was
    # planned: its windows are weighed with the scheduled value (they were with the Trainer's 1: 0.07 off)
    (2, [[3, 3], [3, 2]], 1, True),
])
def test_one_process_saved_inside_the_epoch_resumes_on_two_with_accumulation(tmp_path, saved_steps, shapes,
                                                                             steps_after, scheduled):
    path = str(tmp_path / "mid.ckpt")
    whole = _fit(accumulate=2)  # the one-process epoch's order, uninterrupted
    before = _fit(max_steps=saved_steps, save_to=path, accumulate=2, scheduled=scheduled)  # steps of 2 batches of 3
    assert before["seen"] == whole["seen"][:2 * saved_steps]
    order = [i for b in whole["seen"] for i in b]
    ranks = run_distributed(_fit, world_size=2, ckpt_path=path, accumulate=2, scheduled=scheduled)
    # the remaining samples: global batches of 2 x 3, each cut in two runs; the last (5) as 3 + 2
    steps = list(zip(*(r["seen"] for r in ranks)))
    assert [i for step in steps for b in step for i in b] == order[6 * saved_steps:]
    assert [[len(b) for b in step] for step in steps] == shapes
    assert ranks[0]["step"] == ranks[1]["step"] == saved_steps + steps_after
    assert ranks[0]["weights"] == ranks[1]["weights"]
    model = _reference(_windows([before["seen"]], 2) + _windows([r["seen"] for r in ranks], 2))
    _assert_weights(model, ranks[0]["weights"])  # the uneven last window weighs each sample alike
