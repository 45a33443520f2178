"""Resuming inside an epoch on a different number of processes.

An epoch's *order* is the sequence of samples an uninterrupted run on the process count that
started the epoch trains, step by step: step ``j`` is rank 0's batch ``j``, then rank 1's, ...
(each rank's batches as the distributed sampler deals them); with one process it is the
loader's own order, replayed from the random states that chose it. Samples the distributed
sampler repeats to pad the ranks to equal length are kept once (their first time).

A checkpoint taken inside the epoch has trained a prefix of that order (``consumed`` samples:
batches done x batch size x processes). Resumed on ``M`` processes, the rest of the order is
cut into global batches of ``M x batch_size`` consecutive samples, and rank ``r`` takes the
``r``-th of ``M`` consecutive runs of each (so on the same process count the batches are the
original ones). Every remaining sample is trained once and nothing else is. The last global
batch may be short: its runs then differ in length by one (a global batch of fewer than ``M``
samples is merged into the one before, so every rank has a sample at every step). In a window
whose ranks hold uneven items, each sample's loss is weighted by ``M / the window's items`` before
backward (no correction after DDP's average, which would differ between ranks), so the average
over ranks is the mean over the global batch: a step equals one process training that global batch.
"""

from __future__ import annotations

from typing import Any, Iterator, TypeVar

from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)

from trainer.strategies.checkpoint_io import CheckpointError
from trainer.data.data_position import order_generators, loader_kwargs, restore_epoch_start, rng_states, set_rng_states


T = TypeVar("T")  # a sample: an index (map-style), a (shard, index) address (sharded_stream.py)

def distributed_order(n: int, world_size: int, batch_size: int, drop_last: bool, shuffle: bool, seed: int,
                      epoch: int) -> list[int]:
    """The order of an epoch read through ``DistributedSampler`` on ``world_size`` processes, with
    the loader's ``batch_size`` and ``drop_last``; padding repeats dropped."""
    per_rank = []
    indices: Any = range(n)  # a Sized of indices serves as the dataset (torch's stubs ask for a Dataset)
    for rank in range(world_size):
        sampler: DistributedSampler[int] = DistributedSampler(indices, num_replicas=world_size, rank=rank,
                                                              shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        per_rank.append(list(BatchSampler(sampler, batch_size, drop_last)))
    steps = min(len(batches) for batches in per_rank)
    return _first_occurrences(i for j in range(steps) for batches in per_rank for i in batches[j])


def replayed_order(n: int, batch_size: int, drop_last: bool, shuffle: bool, generator: Any,
                   epoch_start: dict[str, Any]) -> list[int]:
    """The order one process read: its loader's sampler replayed from the epoch's start states (the
    random states are put back afterwards)."""
    indices: Any = range(n)  # a Sized of indices serves as the dataset (torch's stubs ask for a Dataset)
    index_loader = DataLoader(indices, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                              generator=generator)
    if len(order_generators(index_loader)) != len(epoch_start["generators"]):
        raise _cannot("the epoch's order was drawn from generators this loader does not have (a sampler with its "
                      "own generator?)")
    now, gens = rng_states(), [(g, g.get_state()) for g in order_generators(index_loader)]
    try:
        restore_epoch_start(index_loader, epoch_start)
        return _first_occurrences(int(i) for batch in index_loader for i in batch)
    finally:
        set_rng_states(now)
        for gen, state in gens:
            gen.set_state(state)


def deal(remaining: list[T], world_size: int, batch_size: int) -> list[list[list[T]]]:
    """``steps[j][r]``: rank ``r``'s batch at step ``j`` (see the module docstring)."""
    size = world_size * batch_size
    chunks = [remaining[i:i + size] for i in range(0, len(remaining), size)]
    if len(chunks) > 1 and len(chunks[-1]) < world_size:
        last = chunks.pop()
        chunks[-1] = chunks[-1] + last
    if chunks and len(chunks[-1]) < world_size:
        raise _cannot(f"only {len(remaining)} sample(s) of the epoch remain, fewer than the {world_size} processes")
    return [_split(chunk, world_size) for chunk in chunks]


def _split(chunk: list[T], parts: int) -> list[list[T]]:
    """``chunk`` in ``parts`` consecutive runs whose lengths differ by at most one."""
    size, extra = divmod(len(chunk), parts)
    bounds = [r * size + min(r, extra) for r in range(parts + 1)]
    return [chunk[bounds[r]:bounds[r + 1]] for r in range(parts)]


def loss_shares(steps: list[list[list[Any]]], rank: int, accumulation: int) -> list[float]:
    """Per step, the factor on rank ``rank``'s loss: ``world_size x its items / all items`` of its
    accumulation window (1.0 wherever every rank holds as many items)."""
    shares = []
    for start in range(0, len(steps), accumulation):
        window = steps[start:start + accumulation]
        total = sum(len(batch) for step in window for batch in step)
        mine = sum(len(step[rank]) for step in window)
        shares += [len(window[0]) * mine / total] * len(window)
    return shares


def item_weights(steps: list[list[list[Any]]], accumulation: int) -> list[float | None]:
    """Per step, each sample's weight in the mean over its accumulation window on every rank (world size /
    the window's items: DDP's average then gives the global mean), for the windows whose ranks hold
    uneven items; None for the others (every rank's local mean is already its share)."""
    weights: list[float | None] = []
    for start in range(0, len(steps), accumulation):
        window = steps[start:start + accumulation]
        per_rank = [sum(len(step[r]) for step in window) for r in range(len(window[0]))]
        even = len(set(per_rank)) == 1
        weights += [None if even else len(per_rank) / sum(per_rank)] * len(window)
    return weights


def check_weighting(module: Any, shares: list[float]) -> None:
    """Uneven ranks need the loop's loss weighting, which manual optimization does not go through."""
    if not getattr(module, "automatic_optimization", True) and any(s != 1.0 for s in shares):
        raise _cannot(f"the last global batch is split unevenly between the processes and "
                      f"{type(module).__name__} uses manual optimization, whose backward the loop cannot weight")


class _Batches(Sampler[list[int]]):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class DealtRest:
    """The rest of an epoch dealt over this run's processes in ``steps`` (``steps[i][r]``: rank ``r``'s part of
    step ``i``), from ``batch_idx`` ``start`` to ``end``: the part the re-deal of an order (``Reshard``) and of a
    sharded stream (sharded_stream.StreamRest) share. The loop also calls their ``loader`` and ``state``."""

    def __init__(self, steps: list[list[list[Any]]], accumulation: int, epoch: int, start: int) -> None:
        self.steps, self.epoch, self.start = steps, epoch, start
        self.accumulation, self.weights = accumulation, item_weights(steps, accumulation)
        self.end = start + len(steps)  # the batch_idx at which the epoch is over

    def weighted(self, items: Any, engine: Any, batch_idx: int, accumulation: int) -> Iterator[Any]:
        """``items`` weighed for windows of ``accumulation`` micro-batches: the epoch's value once its
        ``on_train_epoch_start`` ran (a GradientAccumulationScheduler may set another than the Trainer's,
        which the plan was made with before anything ran)."""
        if accumulation != self.accumulation:
            self.accumulation, self.weights = accumulation, item_weights(self.steps, accumulation)
        return with_item_weights(items, self.weights[batch_idx - self.start:], engine)


class Reshard(DealtRest):
    """The rest of an epoch re-dealt over this run's processes."""

    checkpoint_key = "epoch_order"  # where a checkpoint inside it records its origin (the loop writes state())

    def __init__(self, origin: dict[str, Any], order: list[int], steps: list[list[list[int]]], rank: int,
                 accumulation: int, epoch: int, start: int) -> None:
        super().__init__(steps, accumulation, epoch, start)
        self.origin, self.order = origin, order
        self.batches = [step[rank] for step in steps]
        self._done = [origin["consumed"]]
        for step in steps:
            self._done.append(self._done[-1] + sum(len(b) for b in step))

    def consumed(self, batch_idx: int) -> int:
        return self._done[min(max(batch_idx - self.start, 0), len(self.steps))]

    def state(self, batch_idx: int) -> dict[str, Any]:
        """What a checkpoint taken at ``batch_idx`` records of this epoch's order."""
        return {**self.origin, "consumed": self.consumed(batch_idx)}

    def loader(self, loader: DataLoader, batch_idx: int) -> DataLoader:
        kwargs = {**loader_kwargs(loader), "persistent_workers": False}
        return DataLoader(loader.dataset, batch_sampler=_Batches(self.batches[batch_idx - self.start:]), **kwargs)


def with_item_weights(items: Any, weights: list[float | None], engine: Any) -> Iterator[Any]:
    """``items`` with the engine's item weight set for each as the loop takes it."""
    try:
        for weight, item in zip(weights, items):
            engine.weigh_items(weight)
            yield item
    finally:
        engine.weigh_items(None)


def _first_occurrences(indices: Any) -> list[int]:
    return list(dict.fromkeys(indices))


def _cannot(reason: str) -> CheckpointError:
    return CheckpointError(f"the rest of the epoch cannot be re-dealt exactly: {reason}")


def _sampling(loader: Any) -> tuple[bool, int | None]:
    """(shuffle, seed of a distributed sampler) of this run's training loader; raises where its
    order cannot be rebuilt."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        raise _cannot(f"the training data is {type(getattr(loader, 'dataset', loader)).__name__}, whose order "
                      "cannot be replayed by index (an iterable dataset may yield another sequence when read again; one "
                      "sharded by files or ranges is re-dealt when it follows the sharded-stream protocol of "
                      "trainer/data/sharded_stream.py and its loader saves its position: torchdata's "
                      "StatefulDataLoader, or num_workers=0)")
    if loader.batch_sampler is None or type(loader.batch_sampler) is not BatchSampler or loader.batch_size is None:
        raise _cannot(f"the training DataLoader uses a custom batch sampler "
                      f"({type(loader.batch_sampler).__name__}), which cannot be re-dealt")
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler) and type(sampler) is DistributedSampler:
        return sampler.shuffle, sampler.seed
    if type(sampler) is SequentialSampler:
        return False, None
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        return True, None
    raise _cannot(f"the training DataLoader uses sampler={type(sampler).__name__}(...), whose order this library "
                  "cannot rebuild (only shuffle=True/False, without replacement or num_samples)")


def plan_for_resume(loop: Any, loader: Any, pending: dict[str, Any]) -> Reshard | None:
    """The re-dealt rest of the epoch a checkpoint from another process count stopped in (``pending``:
    its origin and position, from ``checkpoint.restore``); None when nothing of it remains. Raises,
    naming the reason and the fix, where the rest cannot be re-dealt exactly. ``loop``: the FitLoop."""
    trainer, epoch = loop.trainer, loop.state.current_epoch
    pending = dict(pending)
    path, saved_world, saved_idx = pending.pop("path"), pending.pop("saved_world"), pending.pop("batch_idx")
    strategy, cfg = trainer.accelerator.strategy, trainer.config
    try:
        if not cfg.use_distributed_sampler:
            raise _cannot("Trainer(use_distributed_sampler=False): your loader shards the data itself")
        if cfg.limit_train_batches not in (None, 1.0) or cfg.overfit_batches:
            raise _cannot("limit_train_batches/overfit_batches cut the epoch by a number of batches per process")
        shuffle, _ = _sampling(loader)
        if pending["world_size"] > 1 and pending.get("shuffle") is not None:
            shuffle = pending["shuffle"]  # the order the saving processes' sampler dealt
        n = len(loader.dataset)
        batch_size = pending["batch_size"] = pending["batch_size"] or loader.batch_size
        if pending["consumed"] is None:  # batches done on every process of the epoch's own run
            pending["consumed"] = saved_idx * batch_size * pending["world_size"]
        if pending["world_size"] > 1:
            order = distributed_order(n, pending["world_size"], batch_size, loader.drop_last, shuffle,
                                      pending["seed"], epoch)
        else:
            if loop.epoch_start_rng is None:
                raise _cannot("the checkpoint does not hold the random states that chose the epoch's order")
            order = replayed_order(n, batch_size, loader.drop_last, shuffle, loader.generator,
                                   loop.epoch_start_rng)
        remaining = order[pending["consumed"]:]
        if not remaining:
            return None
        steps = deal(remaining, strategy.world_size, loader.batch_size)
        check_weighting(trainer.module, loss_shares(steps, strategy.global_rank, cfg.accumulate_grad_batches))
    except CheckpointError as err:
        raise CheckpointError(
            f"{path!r} was saved in the middle of epoch {epoch} by {saved_world} process(es); this run "
            f"has {strategy.world_size}, and {err}. Resume with {saved_world} process(es), or from a checkpoint taken "
            "at an epoch end.") from None
    # batch_idx goes on from the saved one on the same number of processes (an epoch re-dealt before);
    # else it is where the samples trained so far would put it here, at least 1 (inside the epoch)
    start = saved_idx if saved_world == strategy.world_size else \
        max(1, -(-pending["consumed"] // (strategy.world_size * loader.batch_size)))
    return Reshard(pending, order, steps, strategy.global_rank, cfg.accumulate_grad_batches,
                   epoch, start)
