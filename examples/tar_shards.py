"""Streaming from WebDataset-style tar shards that resumes without re-reading what was trained.

Each shard is a plain ``.tar`` of samples (``<key>.json``: ``{"x": [...], "y": ...}``); ``TarShardStream``
deals whole shards to the processes (rank r takes shards r, r + world, ...) and, inside a process,
to the loader's workers. Its ``state_dict()`` is the shard and the sample it stopped at, per worker;
torchdata's ``StatefulDataLoader`` saves those states (its workers' too), the Trainer writes them in
the checkpoint, and a resumed run seeks to them: it reads only the samples it has not trained. A
plain ``DataLoader`` over the same stream re-reads and discards the trained part instead (the
resume says so, with the count). It also says how it is sharded (``shard_sizes``, ``read_ranges``, the
samples handed out of each shard), so a run stopped inside an epoch resumes on another number of
processes as well: the samples no process trained are dealt over the new ones, each trained once.

    python examples/tar_shards.py --dir /tmp/shards         # writes 4 shards, trains 2 epochs
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

Sample = tuple[torch.Tensor, torch.Tensor]


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

    It follows the sharded-stream protocol (trainer/data/sharded_stream.py): ``shard_sizes()``,
    ``read_ranges()`` and the ``shard_progress`` in its state, so a checkpoint taken inside an epoch
    resumes on another number of processes too, the rest of the epoch dealt over them.

    Args:
        shards: paths of the tar files (their file names, unique, name the shards).
        read_log: a file to which every sample read is appended (its name), to count reads.
    """

    def __init__(self, shards: Sequence[str | os.PathLike], read_log: str | None = None) -> None:
        self.shards = sorted(str(s) for s in shards)
        names = [os.path.basename(s) for s in self.shards]
        if len(set(names)) != len(names):
            raise ValueError(f"TarShardStream(shards=[...{len(names)} paths]): two shards have the same file name "
                             f"({sorted(n for n in names if names.count(n) > 1)[0]!r}); the names identify the "
                             "shards in a checkpoint. Give every shard a distinct file name.")
        self._paths = dict(zip(names, self.shards))
        self.read_log = read_log
        self._sizes: dict[str, int] | None = None
        self._shard = self._offset = 0
        self._progress: dict[str, int] = {}  # samples handed out of each shard this pass (read in order)
        self._resume: dict[str, Any] | None = None

    def _mine(self) -> list[str]:
        if dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:  # a loader worker process: the launcher's variables (torchrun, trainer launch)
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.shards[rank::world][worker::workers]

    def shard_sizes(self) -> dict[str, int]:
        """Every shard's name and number of samples (tar headers only), the whole dataset's."""
        if self._sizes is None:
            self._sizes = {}
            for name, path in self._paths.items():
                with tarfile.open(path) as tar:
                    self._sizes[name] = sum(1 for m in tar.getmembers() if m.isfile())
        return self._sizes

    def state_dict(self) -> dict[str, Any]:
        """Where this reader is: the index of its current shard and the samples read from it, and (for a
        resume on another number of processes) the samples it handed out of each shard it touched."""
        return {"shard": self._shard, "offset": self._offset,
                "shard_progress": {name: [[0, n]] for name, n in self._progress.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)

    def _read(self, path: str, spans: Iterable[tuple[int, int | None]]) -> Iterator[tuple[int, Sample]]:
        """``(index, sample)`` for the samples ``start:stop`` of one shard, for each span; tarfile seeks over
        the others (it reads their headers only)."""
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for start, stop in spans:
                for j in range(start, len(members) if stop is None else stop):
                    raw = tar.extractfile(members[j]).read()
                    if self.read_log is not None:
                        with open(self.read_log, "a") as log:
                            log.write(members[j].name + "\n")
                    sample = json.loads(raw)
                    yield j, (torch.tensor(sample["x"]), torch.tensor([sample["y"]]))

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> Iterator[Sample]:
        """The samples ``start:stop`` of each named shard, in the order given (the Trainer's re-dealt rest);
        a shard's consecutive ranges are read with it opened once."""
        for name, group in itertools.groupby(ranges, key=lambda r: r[0]):
            for _, sample in self._read(self._paths[name], [(start, stop) for _, start, stop in group]):
                yield sample

    def __iter__(self) -> Iterator[Sample]:
        resume, self._resume = self._resume or {}, None
        first_shard, first_offset = int(resume.get("shard", 0)), int(resume.get("offset", 0))
        self._progress = {name: ranges[-1][1] for name, ranges in resume.get("shard_progress", {}).items()}
        mine = self._mine()
        for i in range(first_shard, len(mine)):
            name = os.path.basename(mine[i])
            for j, sample in self._read(mine[i], [(first_offset if i == first_shard else 0, None)]):
                self._shard, self._offset, self._progress[name] = i, j + 1, j + 1
                yield sample
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
