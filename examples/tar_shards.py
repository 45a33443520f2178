"""Streaming from WebDataset-style tar shards that resumes without re-reading what was trained.

Each shard is a plain ``.tar`` of samples (``<key>.json``: ``{"x": [...], "y": ...}``); ``TarShardStream``
deals whole shards to the processes (rank r takes shards r, r + world, ...) and, inside a process,
to the loader's workers. Its ``state_dict()`` is the shard and the sample it stopped at, per worker;
torchdata's ``StatefulDataLoader`` saves those states (its workers' too), the Trainer writes them in
the checkpoint, and a resumed run seeks to them: it reads only the samples it has not trained. A
plain ``DataLoader`` over the same stream re-reads and discards the trained part instead (the
resume says so, with the count).

    python examples/tar_shards.py --dir /tmp/shards         # writes 4 shards, trains 2 epochs
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info


def write_shards(directory: str | os.PathLike, shards: int = 4, per_shard: int = 10, features: int = 4,
                 seed: int = 0) -> list[str]:
    """Write ``shards`` tar files of ``per_shard`` samples each (y = sum of x); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    for s in range(shards):
        path = directory / f"shard-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                x = torch.randn(features, generator=g)
                raw = json.dumps({"x": x.tolist(), "y": float(x.sum())}).encode()
                info = tarfile.TarInfo(f"{s:05d}{i:05d}.json")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        paths.append(str(path))
    return paths


class TarShardStream(IterableDataset):
    """Samples of ``shards`` in order, each shard read by one process and one loader worker.

    Args:
        shards: paths of the tar files.
        read_log: a file to which every sample read is appended (its name), to count reads.
    """

    def __init__(self, shards: Sequence[str | os.PathLike], read_log: str | None = None) -> None:
        self.shards = sorted(str(s) for s in shards)
        self.read_log = read_log
        self._shard = self._offset = 0
        self._resume: tuple[int, int] | None = None

    def _mine(self) -> list[str]:
        if dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:  # a loader worker process: the launcher's variables (torchrun, trainer launch)
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.shards[rank::world][worker::workers]

    def state_dict(self) -> dict[str, int]:
        """Where this reader is: the index of its current shard and the samples read from it."""
        return {"shard": self._shard, "offset": self._offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (int(state["shard"]), int(state["offset"]))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first_shard, first_offset = self._resume or (0, 0)
        self._resume = None
        mine = self._mine()
        for i in range(first_shard, len(mine)):
            with tarfile.open(mine[i]) as tar:  # headers only: tarfile seeks over the samples it does not read
                members = [m for m in tar.getmembers() if m.isfile()]
                for j in range(first_offset if i == first_shard else 0, len(members)):
                    raw = tar.extractfile(members[j]).read()
                    if self.read_log is not None:
                        with open(self.read_log, "a") as log:
                            log.write(members[j].name + "\n")
                    sample = json.loads(raw)
                    self._shard, self._offset = i, j + 1
                    yield torch.tensor(sample["x"]), torch.tensor([sample["y"]])
        self._shard, self._offset = len(mine), 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="runs/shards")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from torchdata.stateful_dataloader import StatefulDataLoader

    from trainer import Trainer, TrainModule

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    shards = write_shards(args.dir)
    loader = StatefulDataLoader(TarShardStream(shards), batch_size=2, num_workers=args.workers)
    trainer = Trainer(max_epochs=2, default_root_dir=os.path.join(args.dir, "run"))
    trainer.fit(Net(), loader, ckpt_path="last")  # after a kill, the same command reads on from the checkpoint


if __name__ == "__main__":
    main()
