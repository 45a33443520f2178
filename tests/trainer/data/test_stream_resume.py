"""A streaming loader that saves its position resumes without re-reading: torchdata's StatefulDataLoader
over local tar shards (examples/tar_shards.py) with 2 loader worker processes, and the same stream read
in the main process, are saved in the checkpoint and restored, so the resumed run reads only the
samples it has not trained and ends on the uninterrupted run's weights. A plain DataLoader over the
same stream falls back to reading the trained part again, and the resume says so with the count.
On another number of processes the rest of the epoch is re-dealt: test_sharded_stream.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from examples.tar_shards import TarShardStream, write_shards
from trainer import Trainer, TrainModule, seed_everything
from trainer.callbacks import Callback, ModelCheckpoint

stateful = pytest.importorskip("torchdata.stateful_dataloader")
SHARDS, PER_SHARD, BATCH, CRASH_AT = 4, 10, 2, 7  # 40 samples: 20 steps an epoch; stopped after step 7


class Net(TrainModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Crash(Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == CRASH_AT:  # last.ckpt holds step 7: a kill before step 8
            raise RuntimeError("simulated kill")


def _loader(kind: str, shards: list[str], log: Path):
    stream = TarShardStream(shards, read_log=str(log))
    if kind == "stateful, 2 workers":
        return stateful.StatefulDataLoader(stream, batch_size=BATCH, num_workers=2)
    if kind == "dataset state, in process":
        return DataLoader(stream, batch_size=BATCH)
    return DataLoader(stream, batch_size=BATCH, num_workers=2)  # "plain, 2 workers": no position to save


def _fit(tmp_path: Path, kind: str, shards: list[str], log: Path, run: str, crash: bool = False,
         ckpt_path: str | None = None) -> Trainer:
    seed_everything(0)
    callbacks = [ModelCheckpoint(every_n_train_steps=1, save_top_k=0, save_last=True)] + ([Crash()] if crash else [])
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path / run), callbacks=callbacks, accelerator="cpu")
    model = Net()
    try:
        trainer.fit(model, _loader(kind, shards, log), ckpt_path=ckpt_path)
    except RuntimeError as err:
        assert crash and "simulated kill" in str(err)
    trainer.weights = [p.detach().clone() for p in model.parameters()]
    return trainer


def _reads(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("kind", ["stateful, 2 workers", "dataset state, in process", "plain, 2 workers"])
def test_a_resumed_stream_reads_only_what_it_has_not_trained(tmp_path, kind, caplog):
    shards = write_shards(tmp_path / "shards", SHARDS, PER_SHARD)
    reference = _fit(tmp_path, kind, shards, tmp_path / "reference.log", "reference")
    assert _reads(tmp_path / "reference.log") == 2 * SHARDS * PER_SHARD
    _fit(tmp_path, kind, shards, tmp_path / "first.log", "run", crash=True)
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer"):
        resumed = _fit(tmp_path, kind, shards, tmp_path / "resumed.log", "run", ckpt_path="last")
    assert resumed.global_step == reference.global_step == 40
    assert all(torch.equal(a, b) for a, b in zip(resumed.weights, reference.weights))  # bit-exact
    trained_before = CRASH_AT * BATCH
    said = [r.getMessage() for r in caplog.records if "read again and discarded" in r.getMessage()]
    if kind == "plain, 2 workers":  # the fallback: the 14 trained samples are read again, and it is said once
        assert _reads(tmp_path / "resumed.log") == 2 * SHARDS * PER_SHARD
        assert len(said) == 1 and f"its first {CRASH_AT} batch(es) are read again" in said[0], said
    else:  # only the rest of the interrupted epoch, then the next epoch
        assert _reads(tmp_path / "resumed.log") == 2 * SHARDS * PER_SHARD - trained_before
        assert not said


def _two_ranks(tmp: str, shards: list[str]) -> dict:
    import os

    tmp_path = Path(tmp)
    rank = int(os.environ["RANK"])
    kind = "stateful, 2 workers"
    reference = _fit(tmp_path, kind, shards, tmp_path / f"reference{rank}.log", "reference2")
    _fit(tmp_path, kind, shards, tmp_path / f"first{rank}.log", "run2", crash=True)
    resumed = _fit(tmp_path, kind, shards, tmp_path / f"resumed{rank}.log", "run2", ckpt_path="last")
    return {"same": all(torch.equal(a, b) for a, b in zip(resumed.weights, reference.weights)),
            "steps": (reference.global_step, resumed.global_step), "world": resumed.world_size,
            "reads": (_reads(tmp_path / f"reference{rank}.log"), _reads(tmp_path / f"resumed{rank}.log"))}


@pytest.mark.slow
def test_every_rank_resumes_its_own_stream_position_on_two_processes(tmp_path):
    from tests.helpers.distributed import run_distributed

    shards = write_shards(tmp_path / "shards", SHARDS, PER_SHARD)  # 2 shards per rank, 1 per loader worker
    ranks = run_distributed(_two_ranks, tmp=str(tmp_path), shards=shards, timeout=300)
    per_rank = SHARDS * PER_SHARD // 2
    for rank in ranks:
        assert rank["world"] == 2 and rank["steps"] == (20, 20) and rank["same"], rank
        assert rank["reads"] == (2 * per_rank, 2 * per_rank - CRASH_AT * BATCH), rank  # 40 read, then 26
