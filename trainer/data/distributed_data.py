"""Giving each process its share of the data.

Training loaders get a ``DistributedSampler`` (shuffle and drop_last kept, ``set_epoch`` every
epoch, seeded by ``seed_everything``'s seed). It pads the index list so every process has the
same number of batches -- needed in training, where every step is a collective.

Evaluation loaders get ``UnpaddedShard``: process ``r`` of ``n`` takes samples ``r, r+n, ...``
with no padding, so no sample is counted twice in validation metrics. Processes may then run
a different number of evaluation batches; that is safe because nothing synchronises per
evaluation batch (``sync_dist`` values are reduced once, at epoch end, weighted by batch size).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterator

from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from trainer.data.data_position import loader_kwargs


class UnpaddedShard(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset of ``length``, in order, unpadded."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def default_data_seed() -> int:
    """The seed of the distributed sampler's shuffle: ``seed_everything``'s (0 without one)."""
    return int(os.environ.get("TRAINER_GLOBAL_SEED", "0"))


def distribute_loader(loader: Any, world_size: int, rank: int, train: bool, split_batches: bool = False,
                      seedable: bool = False, data_seed: int | None = None, shuffle: bool | None = None) -> Any:
    """``loader`` with a sampler that gives this process its share; other iterables unchanged.

    ``split_batches``: the loader's batch size is the global batch, divided between the processes.
    ``seedable``: shuffle with a sampler seeded by ``data_seed`` (else the global seed) and the
    epoch, one process included, so the order depends only on the seed and the epoch.
    ``shuffle``: whether a training loader's distributed sampler shuffles (None: as the loader did;
    the Trainer passes True, as Lightning's ``use_distributed_sampler=True`` does).
    """
    if not isinstance(loader, DataLoader):
        return loader
    if split_batches and world_size > 1:
        loader = _split_batch_size(loader, world_size)
    if world_size == 1 and not (seedable and isinstance(loader.sampler, RandomSampler)):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        warnings.warn("An IterableDataset is not split between processes automatically: make its __iter__ yield "
                      "only this rank's share (torch.utils.data.get_worker_info and the RANK variable).",
                      stacklevel=3)
        return loader
    if isinstance(loader.sampler, (DistributedSampler, UnpaddedShard)):
        return loader
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(f"DataLoader(batch_sampler={type(loader.batch_sampler).__name__}(...)): a custom batch "
                         "sampler cannot be split between processes automatically. Make it yield only this rank's "
                         "batches (use the RANK and WORLD_SIZE variables), or pass a plain sampler instead.")
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
        raise ValueError(f"DataLoader(sampler={type(loader.sampler).__name__}(...)): a custom sampler cannot be split "
                         "between processes automatically. Wrap it so it yields only this rank's indices, or use "
                         "shuffle=True/False.")
    if train:
        sampler: Sampler = DistributedSampler(loader.dataset, num_replicas=world_size, rank=rank,
                                              shuffle=isinstance(loader.sampler, RandomSampler) if shuffle is None
                                              else shuffle,
                                              seed=default_data_seed() if data_seed is None else data_seed,
                                              drop_last=loader.drop_last)
    else:
        sampler = UnpaddedShard(len(loader.dataset), rank, world_size)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                      **loader_kwargs(loader))


def in_order(loader: Any, reason: str) -> Any:
    """``loader`` reading its dataset in order (a shuffling DataLoader is rebuilt with a sequential
    sampler, with a warning), as Lightning does for ``overfit_batches``."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler):
        return loader
    warnings.warn(f"Trainer({reason}=...): the training dataloader shuffles; it is read in order instead, so "
                  "every epoch sees the same batches.", stacklevel=3)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, drop_last=loader.drop_last,
                      **loader_kwargs(loader))

def _split_batch_size(loader: DataLoader, world_size: int) -> DataLoader:
    """The same loader with ``batch_size / world_size`` samples per process and step. Each step's
    processes together see the same samples as one process with the whole batch (the distributed
    sampler deals consecutive samples to consecutive ranks)."""
    if loader.batch_size is None or loader.batch_size % world_size:
        raise ValueError(f"DataLoaderConfiguration(split_batches=True) with DataLoader(batch_size="
                         f"{loader.batch_size}) on {world_size} processes: the batch size must divide by the number "
                         f"of processes. Use a batch size that is a multiple of {world_size}, or split_batches=False.")
    return DataLoader(loader.dataset, batch_size=loader.batch_size // world_size, sampler=loader.sampler,
                      drop_last=loader.drop_last, **loader_kwargs(loader))
