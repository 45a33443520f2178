"""The Accelerator door resumes a stream inside a pass without reading it again
(``DataLoaderConfiguration(use_stateful_dataloader=True)``): ``save_state`` records each process's loader
position, ``load_state`` puts it back on the same number of processes (bit-exact), and on another number
re-deals the rest of the pass when the dataset follows the sharded-stream protocol
(trainer/data/sharded_stream.py; examples/tar_shards.py's TarShardStream): every sample of the pass is
trained exactly once over the two runs and none is read again; the weights equal one process trained on
each step's union of the ranks' batches. Without the protocol, load_state refuses with the reason.
Every read is counted (TarShardStream's read log); the samples trained are recorded by their x (unique).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from examples.tar_shards import TarShardStream, write_shards
from trainer import Accelerator, DataLoaderConfiguration
from trainer.strategies.checkpoint_io import CheckpointError, atomic_save, safe_load
from trainer.utils import set_seed

pytest.importorskip("torchdata.stateful_dataloader")
PER_SHARD, BATCH, LR = 7, 2, 0.05


def _train(shards: list[str], log: str, stop: int | None = None, save: str | None = None, load: str | None = None,
           workers: int = 2, dataset: IterableDataset | None = None) -> dict:
    """A hand-written loop over a plain DataLoader of the stream; ``stop``: save_state after that many steps
    (inside the loop, as a script does) and end there."""
    set_seed(0)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    stream = TarShardStream(shards, read_log=log) if dataset is None else dataset
    loader = DataLoader(stream, batch_size=BATCH, num_workers=workers)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if load is not None:
        accelerator.load_state(load)
    seen = []
    for x, y in loader:
        seen.append([(tuple(row), value) for row, value in zip(x.tolist(), y.flatten().tolist())])
        accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        if stop is not None and len(seen) == stop:
            if save is not None:
                accelerator.save_state(save)
            break
    return {"seen": seen, "reads": _reads(log), "weights": [p.detach().flatten().tolist() for p in model.parameters()]}


def _on_rank(tmp: str, shards: list[str], **kw) -> dict:
    Path(tmp).mkdir(parents=True, exist_ok=True)
    return _train(shards, str(Path(tmp) / f"rank{os.environ['RANK']}.log"), **kw)


def _reads(log: str) -> int:
    return len(Path(log).read_text().splitlines()) if Path(log).exists() else 0


def _everything(shards: list[str]) -> list:
    stream = TarShardStream(shards)
    return sorted((tuple(x.tolist()), float(y)) for name, size in stream.shard_sizes().items()
                  for x, y in stream.read_ranges([(name, 0, size)]))


def _samples(runs: list[dict]) -> list:
    return [s for run in runs for step in run["seen"] for s in step]


def _reference(windows: list[list]) -> list:
    """One process, SGD on the mean loss over each step's samples (the union of every rank's batch)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for window in windows:
        x = torch.tensor([list(s[0]) for s in window])
        y = torch.tensor([[s[1]] for s in window])
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return [p.detach().flatten().tolist() for p in model.parameters()]


def _union_steps(ranks: list[dict]) -> list[list]:
    return [[s for batch in step for s in batch] for step in zip(*(r["seen"] for r in ranks))]


def _close(got: list, want: list) -> None:
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-6)


# -- the same number of processes: the position comes back -------------------------------------------

@pytest.mark.parametrize("stop", [1, 3, 7])  # 2 workers of one shard each: batches 2, 2, 2, 1 per worker
def test_one_process_resumes_at_its_position_bit_exact_reading_only_the_rest(tmp_path, stop):
    shards = write_shards(tmp_path / "shards", 2, PER_SHARD)  # 14 samples, 8 steps
    straight = _train(shards, str(tmp_path / "straight.log"))
    state = str(tmp_path / "state")
    before = _train(shards, str(tmp_path / "before.log"), stop=stop, save=state)
    after = _train(shards, str(tmp_path / "after.log"), load=state)
    assert before["seen"] + after["seen"] == straight["seen"]  # the same batches, in the same order
    assert after["weights"] == straight["weights"]  # bit-exact
    trained = len(_samples([before]))
    assert after["reads"] == 2 * PER_SHARD - trained  # nothing trained is read again
    print(f"1 -> 1, saved after step {stop}: {trained} trained, {after['reads']} read after load_state")


class Counted(torch.utils.data.Dataset):
    """A map-style dataset that counts the samples read."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.reads = torch.randn(n, 4, generator=g), 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.x[i].sum().reshape(1)


def _train_map_style(stop: int | None = None, save: str | None = None, load: str | None = None) -> dict:
    set_seed(0)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    data = Counted()
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=BATCH, shuffle=True))
    if load is not None:
        accelerator.load_state(load)
    seen, reads = [], data.reads
    for _ in range(2):  # the resumed run's first pass is the rest of the saved one
        for x, y in loader:
            seen.append(x.tolist())
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            if stop is not None and len(seen) == stop:
                accelerator.save_state(save)
                return {"seen": seen}
    return {"seen": seen, "reads": data.reads - reads, "weights": [p.detach().tolist() for p in model.parameters()]}


def test_a_map_style_pass_resumes_at_its_position_without_skip_first_batches(tmp_path):
    straight = _train_map_style()
    before = _train_map_style(stop=4, save=str(tmp_path / "state"))
    after = _train_map_style(load=str(tmp_path / "state"))
    assert before["seen"] + after["seen"] == straight["seen"]  # the rest of the shuffled pass, then the next pass
    assert after["weights"] == straight["weights"]  # bit-exact
    assert after["reads"] == 2 * 12 - 4 * BATCH  # the batches trained before are not read


def test_skip_first_batches_after_a_restored_position_is_refused(tmp_path):
    shards = write_shards(tmp_path / "shards", 2, PER_SHARD)
    state = str(tmp_path / "state")
    _train(shards, str(tmp_path / "before.log"), stop=2, save=state, workers=0)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    model = torch.nn.Linear(4, 1)
    _, _, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR),
                                       DataLoader(TarShardStream(shards), batch_size=BATCH))
    accelerator.load_state(state)
    with pytest.raises(ValueError, match=r"skip_first_batches\(dataloader, 2\) after load_state .*use_stateful_"
                                         r"dataloader=True\): load_state already put it where the saved run was.*"
                                         r"Iterate the dataloader itself"):
        accelerator.skip_first_batches(loader, 2)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_two_processes_resume_each_at_its_own_position_bit_exact(tmp_path):
    from tests.helpers.distributed import run_distributed

    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)
    state = str(tmp_path / "state")
    straight = run_distributed(_on_rank, tmp=str(tmp_path / "straight"), shards=shards, timeout=400)
    before = run_distributed(_on_rank, tmp=str(tmp_path / "before"), shards=shards, stop=3, save=state, timeout=400)
    after = run_distributed(_on_rank, tmp=str(tmp_path / "after"), shards=shards, load=state, timeout=400)
    for rank in range(2):
        assert before[rank]["seen"] + after[rank]["seen"] == straight[rank]["seen"]
        assert after[rank]["weights"] == straight[rank]["weights"]  # bit-exact
        assert after[rank]["reads"] == 2 * PER_SHARD - 3 * BATCH  # each reads only its own untrained samples
    print(f"2 -> 2, saved after step 3: {[r['reads'] for r in after]} read after load_state by the two processes")


# -- another number of processes: the rest is re-dealt ----------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("stop", [3, 7])  # mid-shard; after each worker's 1-sample last batch of its shard
def test_saved_on_two_processes_loaded_on_one_trains_exactly_the_untrained_rest(tmp_path, stop):
    from tests.helpers.distributed import run_distributed

    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)  # 28 samples: 2 shards a rank, 1 a loader worker
    state = str(tmp_path / "state")
    before = run_distributed(_on_rank, tmp=str(tmp_path), shards=shards, stop=stop, save=state, timeout=400)
    after = _train(shards, str(tmp_path / "after.log"), load=state)
    everything = _everything(shards)
    trained = _samples(before)
    assert len(trained) == 2 * (stop * BATCH - (stop == 7))
    assert sorted(trained + _samples([after])) == everything  # every sample of the pass exactly once
    rest = len(everything) - len(trained)
    assert after["reads"] == rest  # nothing trained before is read again
    assert before[0]["weights"] == before[1]["weights"]
    _close(after["weights"], _reference(_union_steps(before) + [b for b in after["seen"]]))
    print(f"2 -> 1, saved after step {stop}: {len(trained)} trained, {after['reads']} read after load_state "
          f"= the {rest} untrained")


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("shards_n, stop, last_step", [
    (3, 2, [3, 2]),  # 17 left: global batches of 4, the last 4 + 1 as 3 + 2 (weighted per sample)
    (4, 4, [2, 2]),  # 20 left
])
def test_saved_on_one_process_loaded_on_two_deals_the_rest_over_both(tmp_path, shards_n, stop, last_step):
    from tests.helpers.distributed import run_distributed

    shards = write_shards(tmp_path / "shards", shards_n, PER_SHARD)
    state = str(tmp_path / "state")
    before = _train(shards, str(tmp_path / "before.log"), stop=stop, save=state)
    ranks = run_distributed(_on_rank, tmp=str(tmp_path), shards=shards, load=state, timeout=400)
    everything = _everything(shards)
    trained = _samples([before])
    assert sorted(trained + _samples(ranks)) == everything  # every sample of the pass exactly once
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"])  # in lockstep
    assert [len(b) for b in (ranks[0]["seen"][-1], ranks[1]["seen"][-1])] == last_step
    rest = len(everything) - len(trained)
    reads = [r["reads"] for r in ranks]
    assert sum(reads) == rest  # nothing trained before is read again, nothing read twice
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # a step on two processes equals one process training the union of their batches, the uneven one included
    _close(ranks[0]["weights"], _reference(before["seen"] + _union_steps(ranks)))
    print(f"1 -> 2, {len(everything)} samples, saved after step {stop}: {len(trained)} trained, {reads} read after "
          f"load_state by the two processes (the {rest} untrained)")


def _relabel(state: str, rank1: dict) -> None:
    """The state as if two processes saved it, rank 1's loader state ``rank1``."""
    path = os.path.join(state, "state.ckpt")
    content = safe_load(path)
    content["metadata"]["world_size"] = 2
    own = content["accelerator"]["dataloaders"][0][0]
    content["accelerator"]["dataloaders"][1] = [{"epoch_start": own["epoch_start"], **rank1}]
    atomic_save(content, path)


CLAIMED = {"shard-00003.tar": [[0, 3]]}  # what the relabelled rank 1 says it trained


def test_a_state_saved_inside_the_redealt_rest_loads_it_exactly(tmp_path):
    shards = write_shards(tmp_path / "shards", 4, PER_SHARD)  # one process: 2 workers of 2 shards each
    state, again = str(tmp_path / "state"), str(tmp_path / "again")
    before = _train(shards, str(tmp_path / "before.log"), stop=4, save=state)
    _relabel(state, {"epoch": 0, "in_pass": True, "stateful": True, "batches": 3,
                     "position": {"shard_progress": CLAIMED}})
    straight = _train(shards, str(tmp_path / "straight.log"), load=state)
    trained = [a for a, _ in _samples([before])]
    assert len(_samples([straight])) == 4 * PER_SHARD - 4 * BATCH - 3  # the rest, without rank 1's claim
    assert not set(trained) & {a for a, _ in _samples([straight])}
    first = _train(shards, str(tmp_path / "first.log"), load=state, stop=3, save=again)
    consumed = safe_load(os.path.join(again, "state.ckpt"))["accelerator"]["dataloaders"][0][0]["stream_rest"]
    # 4 steps of 2 workers (shards 0 and 1 to 4 each), rank 1's claim, then 3 steps of the rest in shard order
    assert consumed == {"consumed": {"shard-00000.tar": [[0, 7]], "shard-00001.tar": [[0, 7]],
                                     "shard-00003.tar": [[0, 3]]}}
    second = _train(shards, str(tmp_path / "second.log"), load=again)
    assert first["seen"] + second["seen"] == straight["seen"]
    assert second["weights"] == straight["weights"]  # bit-exact: the same batches, the same order
    assert second["reads"] == straight["reads"] - 3 * BATCH  # only the rest of the rest is read


def test_a_map_style_position_on_another_process_count_is_refused(tmp_path):
    state = str(tmp_path / "state")
    _train_map_style(stop=2, save=state)
    _relabel(state, {"epoch": 0, "in_pass": True, "stateful": True, "batches": 2})
    with pytest.raises(CheckpointError, match=r"prepared dataloader 0 was saved inside a pass \(epoch 0, 2 batch\(es\) "
                                              r"in\) .* this run has 1, and the rest of the epoch cannot be re-dealt: "
                                              r"it reads a map-style Counted, whose position is the batches each "
                                              r"process was dealt.*Or load it with 2 process\(es\)"):
        _train_map_style(load=state)


# -- refusals -----------------------------------------------------------------------------------------

class PositionOnly(IterableDataset):
    """A stream that saves its position but does not say how it is sharded."""

    def __init__(self, n: int = 14) -> None:
        self.samples = [(torch.full((4,), float(i)), torch.tensor([float(i)])) for i in range(n)]
        self.offset = 0

    def state_dict(self) -> dict:
        return {"offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.offset = state["offset"]

    def __iter__(self):
        for self.offset in range(self.offset, len(self.samples)):
            yield self.samples[self.offset]
        self.offset = 0


def test_another_process_count_without_the_protocol_is_refused_before_anything_loads(tmp_path):
    state = str(tmp_path / "state")
    before = _train([], str(tmp_path / "before.log"), stop=3, save=state, workers=0, dataset=PositionOnly())
    path = os.path.join(state, "state.ckpt")
    content = safe_load(path)  # as if two processes saved it, rank 1 at its own position
    content["metadata"]["world_size"] = 2
    content["accelerator"]["dataloaders"][1] = content["accelerator"]["dataloaders"][0]
    atomic_save(content, path)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    torch.manual_seed(1)
    model = accelerator.prepare(torch.nn.Linear(4, 1))
    accelerator.prepare(torch.optim.SGD(model.parameters(), lr=LR), DataLoader(PositionOnly(), batch_size=BATCH))
    untouched = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=r"load_state\(.*\): prepared dataloader 0 was saved inside a pass "
                                              r"\(epoch 0, 3 batch\(es\) in\) with its position on each of 2 "
                                              r"process\(es\); this run has 1, and the rest of the epoch cannot be "
                                              r"re-dealt: PositionOnly does not say how it is sharded \(it has no "
                                              r"shard_sizes, read_ranges\).*sharded-stream protocol.*Or load it with "
                                              r"2 process\(es\), or save the state at the end of a pass"):
        accelerator.load_state(state)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), untouched))  # nothing was loaded
    assert len(before["seen"]) == 3


def test_a_stream_process_zero_would_read_for_everyone_is_refused_when_stateful():
    from trainer.accelerate.data_loader import stateful_loader

    with pytest.raises(ValueError, match=r"use_stateful_dataloader=True\) with a DataLoader over PositionOnly on 2 "
                                         r"processes, which process 0 reads for every process \(dispatch_batches is "
                                         r"the default for an IterableDataset\).*sharded-stream protocol"):
        stateful_loader(DataLoader(PositionOnly(), batch_size=BATCH), 2, None)
    with pytest.raises(ValueError, match=r"dispatch_batches=True\).*drop dispatch_batches=True"):
        stateful_loader(DataLoader(TarShardStream([]), batch_size=BATCH), 2, True)


def test_a_plain_loader_over_a_stream_is_prepared_as_a_stateful_one():
    from torchdata.stateful_dataloader import StatefulDataLoader

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True))
    prepared = accelerator.prepare(DataLoader(PositionOnly(), batch_size=BATCH, num_workers=1))
    assert isinstance(prepared.loader, StatefulDataLoader)
    assert prepared.loader.batch_size == BATCH and prepared.loader.num_workers == 1
