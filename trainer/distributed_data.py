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

from trainer.data_position import loader_kwargs


class UnpaddedShard(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset of ``length``, in order, unpadded."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def _seed() -> int:
    return int(os.environ.get("TRAINER_GLOBAL_SEED", "0"))


def distribute_loader(loader: Any, world_size: int, rank: int, train: bool) -> Any:
    """``loader`` with a sampler that gives this process its share; other iterables unchanged."""
    if world_size == 1 or not isinstance(loader, DataLoader):
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
                                              shuffle=isinstance(loader.sampler, RandomSampler), seed=_seed(),
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
