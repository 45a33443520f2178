"""Resuming inside an epoch: the same shuffled order, minus the batches already trained on.

At each epoch start (before the loader is iterated) the loop captures the state of every
random generator the loader draws its order from. To resume at batch ``b`` of that epoch,
those states are restored, a loader that skips the first ``b`` batches *by index* (no data
is read for them) draws the very same order, and once it has produced its first batch the
RNG states of the checkpoint moment are put back.

Map-style datasets in a ``DataLoader`` are resumed exactly. Any other iterable (an
``IterableDataset``, a generator, a list) is resumed by reading and discarding the first
``b`` batches again: exact when it yields the same sequence again, and it costs the time
to read them.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset


def order_generators(loader: Any) -> list[torch.Generator]:
    """The generators a loader draws its order from (its own, its sampler's), each once."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def capture_epoch_start(loader: Any) -> dict[str, Any]:
    """The generator states that decide this epoch's order (torch's default and the loader's own)."""
    return {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in order_generators(loader)]}


def restore_epoch_start(loader: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    for gen, saved in zip(order_generators(loader), state["generators"]):
        gen.set_state(saved)


class _SkipFirst:
    """A (batch) sampler that draws exactly as the wrapped one and drops the first ``skip`` items."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def skip_batches(loader: Any, skip: int) -> Any:
    """An iterable that yields what ``loader`` would, from batch ``skip`` on."""
    if skip == 0:
        return loader
    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        return _rebuild(loader, skip)
    return itertools.islice(loader, skip, None)


class SameRandomStreams:
    """``loader`` iterated without moving the process's random streams: a DataLoader's iterator draws
    its base seed from torch's generator when it starts, a draw the uninterrupted run made at the
    epoch's start, before the checkpoint. The states are put back once the first batch is read.
    ``before_first_batch`` (if set) runs just before the iterator starts: it may set the states the
    order is drawn from (those of the interrupted epoch's start). ``put_back_states = False``: the
    draws stand (a pass that starts afresh, as the uninterrupted run's did, e.g. after a state saved
    between epochs)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.before_first_batch: Any = None
        self.put_back_states = True

    def __iter__(self) -> Iterator[Any]:
        states = rng_states()
        if self.before_first_batch is not None:
            self.before_first_batch()
        iterator = iter(self.loader)
        first = next(iterator, _END)
        if self.put_back_states:
            set_rng_states(states)
        if first is _END:
            return
        yield first
        yield from iterator

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


_END = object()


def loader_kwargs(loader: DataLoader) -> dict[str, Any]:
    """The settings of ``loader`` other than its dataset and sampling, to build a sibling."""
    kwargs: dict[str, Any] = dict(
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        persistent_workers=loader.persistent_workers, pin_memory_device=loader.pin_memory_device)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return kwargs


def _rebuild(loader: DataLoader, skip: int) -> DataLoader:
    kwargs = {**loader_kwargs(loader), "persistent_workers": False}
    if loader.batch_sampler is not None:
        return DataLoader(loader.dataset, batch_sampler=_SkipFirst(loader.batch_sampler, skip), **kwargs)
    return DataLoader(loader.dataset, sampler=_SkipFirst(loader.sampler, skip), batch_size=None, **kwargs)


def rng_states() -> dict[str, Any]:
    """Every process-global RNG: python, numpy (if installed), torch CPU and CUDA."""
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        states["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(states["torch"])
    if "numpy" in states:
        try:
            import numpy as np
        except ImportError:
            pass
        else:
            kind, keys, pos, has_gauss, cached = states["numpy"]
            np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def set_rng_states_after_first(items: Any, states: dict[str, Any]) -> Any:
    """``items``, with the RNG ``states`` put back once the first item is produced (the loader has then
    drawn its order from the epoch's restored states)."""
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        return
    set_rng_states(states)
    yield first
    yield from iterator
