"""A stream sharded by files or ranges, stopped inside an epoch, resumes on another number of processes
(trainer/data/sharded_stream.py): the samples no process trained are dealt over the new ones, every
sample of the interrupted epoch is trained exactly once, none is read again, and the ranks take the
same number of steps. Sample ids are recorded in training_step (each sample's x is unique) and every
read is counted (TarShardStream's read log). A dataset without the protocol is refused with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from torch.utils.data import DataLoader, IterableDataset

from examples.tar_shards import TarShardStream, write_shards
from trainer import TrainModule, seed_everything
from trainer.data.reshard import deal
from trainer.data.sharded_stream import (PlannedPieces, StreamRest, _trained_by_every_rank, as_ranges, remaining,
                                         union)
from trainer.strategies.checkpoint_io import CheckpointError, atomic_save, safe_load
from tests.helpers.trainers import quiet_trainer

stateful = pytest.importorskip("torchdata.stateful_dataloader")
PER_SHARD, BATCH = 7, 2


# -- the arithmetic --------------------------------------------------------------------------------

def _reader_position(progress: dict, workers: int) -> dict:
    """A StatefulDataLoader-shaped position holding each worker's dataset state (or the dataset's own)."""
    if workers == 0:
        return {"shard": 0, "offset": 0, "shard_progress": progress[0]}
    return {"_snapshot": {"_worker_snapshots": {f"worker_{w}": {"worker_id": w, "dataset_state": {
        "shard_progress": progress[w]}} for w in range(workers)}}}


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6), saved_world=st.integers(1, 3),
       workers=st.integers(0, 2), world=st.integers(1, 4), batch=st.integers(1, 4), data=st.data())
@example(sizes=[7, 7, 7], saved_world=1, workers=2, world=2, batch=2, data=None)
def test_the_rest_is_dealt_once_in_lockstep_and_a_second_stop_continues_it(sizes, saved_world, workers, world,
                                                                         batch, data):
    names = [f"s{i}" for i in range(len(sizes))]
    shard_sizes = dict(zip(names, sizes))
    positions, trained = {}, set()
    for rank in range(saved_world):  # each reader reads its shards in order and stops somewhere in them
        progress = []
        for w in range(max(workers, 1)):
            mine = names[rank::saved_world][w::max(workers, 1)]
            total = sum(shard_sizes[n] for n in mine)
            read = data.draw(st.integers(0, total)) if data is not None else min(total, 5)
            reader: dict = {}
            for n in mine:
                if read <= 0:
                    break
                took = min(read, shard_sizes[n])
                reader[n] = [[0, took]]
                trained |= {(n, i) for i in range(took)}
                read -= took
            progress.append(reader)
        positions[rank] = _reader_position(progress, workers)
    consumed = _trained_by_every_rank(positions, saved_world, "S")
    rest = remaining(shard_sizes, consumed)
    everything = {(n, i) for n in names for i in range(shard_sizes[n])}
    assert set(rest) == everything - trained and len(set(rest)) == len(rest)  # the untrained, each once
    if not rest:
        return  # the epoch was over: nothing to deal (plan_stream_resume marks it trained)
    if len(rest) < world:
        with pytest.raises(CheckpointError, match=r"fewer than the \d+ processes"):
            deal(rest, world, batch)
        return
    steps = deal(rest, world, batch)
    plans = [StreamRest(consumed, steps, r, 1, 0, 1) for r in range(world)]
    assert len({len(p.pieces) for p in plans}) == 1  # lockstep: every rank the same number of steps
    assert all(sum(b - a for _, a, b in piece) >= 1 for p in plans for piece in p.pieces)  # a sample each step
    read_by_ranks = [(n, i) for p in plans for piece in p.pieces for n, a, b in piece for i in range(a, b)]
    assert sorted(read_by_ranks) == sorted(rest)  # every untrained sample read by exactly one rank
    # stopped again after k steps of the rest and re-dealt on the same processes: the same batches follow
    k = data.draw(st.integers(0, len(steps))) if data is not None else 1
    again = remaining(shard_sizes, union(plans[0].state(1 + k)["consumed"]))
    assert again == rest[sum(len(b) for step in steps[:k] for b in step):]
    if again:
        assert deal(again, world, batch) == steps[k:]


class _Reads:
    """A stand-in for a dataset's read_ranges: the (shard, index) of each sample."""

    def read_ranges(self, ranges):
        return ((name, i) for name, start, stop in ranges for i in range(start, stop))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_hand_out_the_planned_pieces_in_order(workers):
    pieces = [as_ranges([("a", i) for i in range(j, j + 2)]) for j in range(0, 14, 2)] + [[("b", 0, 1)]]
    loader = DataLoader(PlannedPieces(_Reads(), pieces), batch_size=None, num_workers=workers,
                        collate_fn=lambda samples: samples)
    assert list(loader) == [[(n, i) for n, a, b in piece for i in range(a, b)] for piece in pieces]


# -- one process, a checkpoint relabelled as saved by two (fast) -----------------------------------

def _sample_ids(shards: list[str]) -> dict:
    """Each sample's x (unique) -> (shard name, index in the shard)."""
    stream = TarShardStream(shards)
    return {tuple(x.tolist()): (name, i) for name, size in stream.shard_sizes().items()
            for i, (x, _) in enumerate(stream.read_ranges([(name, 0, size)]))}


class Net(TrainModule):
    """A linear model; records, per step, the epoch and the ids of the samples it trained."""

    def __init__(self, ids: dict):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.ids, self.seen = ids, []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, [self.ids[tuple(row)] for row in x.tolist()]))
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader(shards, log, workers=0, kind="stateful"):
    stream = TarShardStream(shards, read_log=str(log))
    if kind == "stateful":
        return stateful.StatefulDataLoader(stream, batch_size=BATCH, num_workers=workers)
    return DataLoader(stream, batch_size=BATCH, num_workers=workers)


def _fit(shards, log, max_steps=-1, max_epochs=1, ckpt_path=None, save_to=None, workers=0, kind="stateful",
         strategy="auto", dataset=None):
    seed_everything(0)
    model = Net(_sample_ids(shards))
    trainer = quiet_trainer(max_epochs=max_epochs, max_steps=max_steps, enable_checkpointing=False,
                            enable_model_summary=False, num_sanity_val_steps=0, strategy=strategy,
                            default_root_dir=str(Path(log).parent / "run"))
    loader = _loader(shards, log, workers, kind) if dataset is None else DataLoader(dataset, batch_size=BATCH)
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    if save_to:
        trainer.save_checkpoint(save_to)
    return {"seen": model.seen, "step": trainer.global_step, "reads": _reads(log),
            "weights": [p.detach().flatten().tolist() for p in model.parameters()]}


def _reads(log) -> int:
    return len(Path(log).read_text().splitlines()) if Path(log).exists() else 0


def _relabel(path: str, rank1) -> None:
    """The checkpoint as if two processes saved it, rank 1's position ``rank1``."""
    content = safe_load(path)
    content["metadata"]["world_size"] = 2
    content["loops"]["loader_positions"][1] = rank1
    atomic_save(content, path)


def _ids(seen, epoch=0):
    return [i for e, ids in seen if e == epoch for i in ids]


CLAIMED = {"shard-00003.tar": [[0, 3]]}  # what the relabelled rank 1 says it trained


@settings(max_examples=4, deadline=None)
@given(stop=st.integers(1, 10))
@example(stop=1)
@example(stop=10)
def test_a_stream_stopped_at_any_step_resumes_on_another_process_count_reading_only_the_rest(tmp_path_factory,
                                                                                            stop):
    tmp = tmp_path_factory.mktemp("stream")
    shards = write_shards(tmp / "shards", 4, PER_SHARD)  # 28 samples; one process reads them in order
    path = str(tmp / "mid.ckpt")
    before = _fit(shards, tmp / "before.log", max_steps=stop, save_to=path)
    _relabel(path, {"shard": 0, "offset": 3, "shard_progress": CLAIMED})
    after = _fit(shards, tmp / "after.log", ckpt_path=path)
    claimed = [("shard-00003.tar", i) for i in range(3)]
    everything = sorted(_sample_ids(shards).values())
    trained_before = _ids(before["seen"])
    assert sorted(trained_before + claimed + _ids(after["seen"])) == everything  # each sample of the epoch once
    rest = [a for a in everything if a not in trained_before + claimed]
    assert _ids(after["seen"]) == rest  # in shard order, one process: the rest's own order
    assert after["reads"] == len(rest) == 28 - 3 - BATCH * stop  # nothing trained is read again
    assert after["step"] == stop + -(-len(rest) // BATCH)


def test_a_checkpoint_inside_the_redealt_rest_resumes_it_exactly(tmp_path):
    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)
    path, again = str(tmp_path / "mid.ckpt"), str(tmp_path / "again.ckpt")
    _fit(shards, tmp_path / "before.log", max_steps=4, save_to=path)
    _relabel(path, {"shard_progress": CLAIMED})
    straight = _fit(shards, tmp_path / "straight.log", ckpt_path=path)
    first = _fit(shards, tmp_path / "first.log", ckpt_path=path, max_steps=7, save_to=again)
    consumed = safe_load(again)["loops"]["stream_rest"]["consumed"]
    assert consumed == {"shard-00000.tar": [[0, 7]], "shard-00001.tar": [[0, 7]], "shard-00003.tar": [[0, 3]]}
    second = _fit(shards, tmp_path / "second.log", ckpt_path=again)
    assert first["seen"] + second["seen"] == straight["seen"]
    assert second["weights"] == straight["weights"]  # bit-exact: the same batches, the same order
    # the first read one batch more than it trained (the loop looks a batch ahead); the second reads only the rest
    assert first["reads"] == 4 * BATCH and second["reads"] == straight["reads"] - 3 * BATCH


# -- refusals -----------------------------------------------------------------------------------

class PositionOnly(IterableDataset):
    """A stream that saves its position but does not say how it is sharded."""

    def __init__(self, shards):
        self.samples = [(torch.tensor(x), torch.tensor([0.0])) for x in _sample_ids(shards)]
        self.offset = 0

    def state_dict(self):
        return {"offset": self.offset}

    def load_state_dict(self, state):
        self.offset = state["offset"]

    def __iter__(self):
        for self.offset in range(self.offset, len(self.samples)):
            yield self.samples[self.offset]
        self.offset = 0


@pytest.mark.parametrize("rank1, dataset, kw, reason", [
    ({"shard_progress": {}}, "PositionOnly", {},
     r"PositionOnly does not say how it is sharded \(it has no shard_sizes, read_ranges\)\. A dataset sharded by "
     r"files or ranges can be re-dealt: give it shard_sizes\(\), read_ranges\(ranges\) and a 'shard_progress' "
     r"entry in its state_dict\(\)"),
    ({"shard": 0, "offset": 0}, None, {}, r"rank 1's saved position has no 'shard_progress'"),
    ({"shard_progress": {"gone.tar": [[0, 1]]}}, None, {}, r"the checkpoint.s position names shard 'gone.tar', which shard_sizes\(\) does not "
                                                          r"list"),
    ({"shard_progress": {}}, None, {"limit_train_batches": 5}, r"limit_train_batches/overfit_batches cut the epoch"),
])
def test_a_rest_that_cannot_be_redealt_is_refused_with_the_reason(tmp_path, rank1, dataset, kw, reason):
    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)
    path = str(tmp_path / "mid.ckpt")
    stream = PositionOnly(shards) if dataset else None
    _fit(shards, tmp_path / "before.log", max_steps=3, save_to=path, dataset=stream)
    _relabel(path, rank1)
    model = Net(_sample_ids(shards))
    trainer = quiet_trainer(max_epochs=1, enable_checkpointing=False, num_sanity_val_steps=0, **kw)
    loader = DataLoader(PositionOnly(shards), batch_size=BATCH) if dataset else _loader(shards, tmp_path / "r.log")
    with pytest.raises(CheckpointError, match=r"saved inside epoch 0 \(batch_idx 3\) with the training loader's own "
                                              r"position on each of 2 process\(es\); this run has 1, and the rest of "
                                              r"the epoch cannot be re-dealt: " + reason + r".*Or resume with 2 "
                                              r"process\(es\), or from a checkpoint taken at an epoch end"):
        trainer.fit(model, loader, ckpt_path=path)
    assert model.seen == [] and _reads(tmp_path / "r.log") == 0  # refused before anything is read


def test_a_stream_whose_loader_saves_no_position_is_refused_naming_the_protocol(tmp_path):
    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)
    path = str(tmp_path / "mid.ckpt")
    _fit(shards, tmp_path / "before.log", max_steps=3, save_to=path, kind="plain", workers=2)
    content = safe_load(path)
    assert "loader_positions" not in content["loops"]  # a plain DataLoader's workers keep their place to themselves
    content["metadata"]["world_size"] = 2
    atomic_save(content, path)
    with pytest.raises(CheckpointError, match=r"TarShardStream, whose order cannot be replayed by index .*sharded-"
                                              r"stream protocol .*StatefulDataLoader, or num_workers=0"):
        _fit(shards, tmp_path / "after.log", ckpt_path=path, kind="plain", workers=2)


# -- real processes: 2 -> 1 and 1 -> 2 ------------------------------------------------------------

def _reference(windows, shards):
    """One process, SGD on the mean loss over each optimizer step's samples (the union of every rank's)."""
    seed_everything(0)
    model = Net({})
    opt = model.configure_optimizers()
    samples = {address: x for x, address in _sample_ids(shards).items()}
    ys = {address: sum(x) for address, x in samples.items()}  # write_shards: y = sum of x
    for window in windows:
        x = torch.tensor([samples[a] for a in window])
        y = torch.tensor([[ys[a]] for a in window])
        opt.zero_grad()
        torch.nn.functional.mse_loss(model.layer(x), y).backward()
        opt.step()
    return [p.detach().flatten().tolist() for p in model.parameters()]


def _steps(ranks_seen):
    """Each optimizer step's samples over the ranks (accumulation 1)."""
    return [[a for _, ids in step for a in ids] for step in zip(*ranks_seen)]


def _on_rank(tmp: str, shards: list[str], **kw) -> dict:
    rank = os.environ["RANK"]
    return _fit(shards, Path(tmp) / f"rank{rank}.log", strategy="ddp", workers=2, **kw)


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("stop", [3, 7])  # mid-shard; after each worker's short last batch of a shard
def test_two_processes_stopped_inside_the_epoch_resume_on_one(tmp_path, stop):
    from tests.helpers.distributed import run_distributed

    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)  # 2 shards a rank, 1 a loader worker: 8 steps
    path = str(tmp_path / "mid.ckpt")
    before = run_distributed(_on_rank, tmp=str(tmp_path), shards=shards, max_steps=stop, max_epochs=2,
                             save_to=path, timeout=400)
    after = _fit(shards, tmp_path / "after.log", ckpt_path=path, max_epochs=2, workers=2)
    everything = sorted(_sample_ids(shards).values())
    trained_before = [a for r in before for a in _ids(r["seen"])]
    assert len(trained_before) == 2 * (stop * BATCH - (stop == 7))  # the 7th step is each rank's 1-sample batch
    assert sorted(trained_before + _ids(after["seen"])) == everything  # every sample of the epoch once
    assert sorted(_ids(after["seen"], epoch=1)) == everything  # the next epoch deals normally
    rest = len(everything) - len(trained_before)
    assert after["reads"] == rest + len(everything)  # nothing trained before is read again
    print(f"2 -> 1, stopped after step {stop}: {len(trained_before)} trained, {after['reads']} read after the resume "
          f"= {rest} untrained + {len(everything)} of the next epoch")


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("shards_n, stop, epochs, last_step", [
    (3, 2, 1, [3, 2]),  # 17 left: global batches of 4, the last 4 + 1 as 3 + 2 (weighted)
    (4, 4, 2, [2, 2]),  # 20 left, then an epoch dealt by the stream itself over the two ranks
])
def test_one_process_stopped_inside_the_epoch_resumes_on_two(tmp_path, shards_n, stop, epochs, last_step):
    from tests.helpers.distributed import run_distributed

    shards = write_shards(tmp_path / "shards", shards_n, PER_SHARD)
    path = str(tmp_path / "mid.ckpt")
    before = _fit(shards, tmp_path / "before.log", max_steps=stop, max_epochs=epochs, save_to=path, workers=2)
    ranks = run_distributed(_on_rank, tmp=str(tmp_path), shards=shards, ckpt_path=path, max_epochs=epochs,
                            timeout=400)
    everything = sorted(_sample_ids(shards).values())
    trained_before = _ids(before["seen"])
    after = [_ids(r["seen"]) for r in ranks]
    assert sorted(trained_before + after[0] + after[1]) == everything  # every sample of the epoch once
    assert ranks[0]["step"] == ranks[1]["step"]  # in lockstep
    rest = len(everything) - len(trained_before)
    rest_steps = [[len(ids) for e, ids in step] for step in zip(*(r["seen"] for r in ranks)) if step[0][0] == 0]
    assert rest_steps[-1] == last_step and sum(map(sum, rest_steps)) == rest
    reads = [r["reads"] for r in ranks]
    assert sum(reads) == rest + (len(everything) if epochs == 2 else 0)  # nothing trained before is read again
    if epochs == 2:
        assert sorted(_ids(ranks[0]["seen"], 1) + _ids(ranks[1]["seen"], 1)) == everything
    # a step on two ranks equals one process training the union of their batches, the uneven one included
    windows = [ids for _, ids in before["seen"]] + _steps([r["seen"] for r in ranks])
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for got, want in zip(ranks[0]["weights"], _reference(windows, shards)):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=0, atol=1e-6)
    print(f"1 -> 2, {len(everything)} samples, stopped after step {stop}: {len(trained_before)} trained, "
          f"{reads} read after the resume by the two ranks ({rest} untrained"
          f"{f' + {len(everything)} of the next epoch' if epochs == 2 else ''})")
