"""Sharing a dataloader between processes as Accelerate does (the Accelerator door), under Accelerate's
names: ``prepare_data_loader``, ``skip_first_batches``, ``SeedableRandomSampler``, ``BatchSamplerShard``,
``DataLoaderShard``, ``DataLoaderDispatcher``.

Accelerate deals *whole batches* of the single-process order: with N processes, step ``s`` gives
process ``r`` batch ``s * N + r`` of the order one process would read (``split_batches=True``: the
``r``-th slice of batch ``s``). N processes at the same seed therefore see, step by step, exactly the
samples one process sees with N times the batch (or accumulation N), and gathering a step's batches in
rank order gives the single-process order. The order comes from the loader's own sampler and
``generator=`` (a shuffle without one gets a generator seeded from torch's stream when it is
prepared, as Accelerate does); at the start of every pass process 0's generator state is sent to the
others (one small broadcast per pass), so processes whose global random streams differ still agree.

``even_batches=True`` (the default) completes the last step by cycling back to the first samples of
the pass, so every process runs the same number of steps (``gather_for_metrics`` drops the repeats
again); ``even_batches=False`` lets the last processes run one batch less (evaluation only, see
``Accelerator.prepare_data_loader``). ``dispatch_batches=True``: process 0 alone reads the loader and
sends each process its share (what an iterable dataset needs: it cannot be indexed per process) --
except a sharded stream (``trainer/data/sharded_stream.py``), which deals its shards to the processes
itself: each process reads its own loader, unless ``dispatch_batches=True`` is given.

The Trainer door keeps Lightning's ``DistributedSampler`` (``trainer/data/distributed_data.py``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler

from trainer.data.data_position import loader_kwargs, skip_batches


class SeedableRandomSampler(RandomSampler):
    """A ``RandomSampler`` whose order depends only on a seed and the epoch: pass ``e`` shuffles with
    ``seed + e`` (the seed defaults to torch's initial seed, i.e. ``set_seed``'s). After each full
    pass the epoch advances by one; ``set_epoch(e)`` chooses the next pass's epoch. Every process
    draws the same order without communicating.

    Example:
        >>> sampler = SeedableRandomSampler(range(4), seed=0)
        >>> list(sampler) == list(SeedableRandomSampler(range(4), seed=0))
        True
    """

    def __init__(self, *args: Any, seed: int | None = None, data_seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chosen = data_seed if data_seed is not None else seed
        self.initial_seed = torch.random.initial_seed() if chosen is None else int(chosen)
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        if self.generator is None:
            self.generator = torch.Generator()
        self.generator.manual_seed(self.initial_seed + self.epoch)
        yield from super().__iter__()
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


def is_sharded_stream(dataset: Any) -> bool:
    """Whether ``dataset`` follows the sharded-stream protocol (it says how it is sharded and deals its
    shards to the processes itself): each process then reads its own loader."""
    from trainer.data.sharded_stream import missing_methods

    return isinstance(dataset, IterableDataset) and not missing_methods(dataset)


def _world_and_rank(num_processes: int | None, process_index: int | None) -> tuple[int, int]:
    if num_processes is not None and process_index is not None:
        return num_processes, process_index
    from trainer.accelerate.state import PartialState

    state = PartialState()
    return (state.num_processes if num_processes is None else num_processes,
            state.process_index if process_index is None else process_index)


def _broadcast_from_main(value: Any) -> Any:
    """Process 0's ``value`` on every process (unchanged without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class BatchSamplerShard(BatchSampler):
    """Process ``process_index``'s batches of ``batch_sampler`` (any batch sampler: torch's
    ``BatchSampler`` or a custom one yielding lists of indices): batches ``r, r + N, r + 2N, ...`` of
    its order, or with ``split_batches`` the ``r``-th slice of every batch. See the module doc for
    ``even_batches``. A random order is drawn once per pass on process 0 and used by every process.

    Attributes:
        batch_sampler: the wrapped batch sampler (its ``sampler``, e.g. a ``RandomSampler``, is ``.sampler``).
        even_batches: may be changed between passes (``Accelerator.join_uneven_inputs`` does).
    """

    def __init__(self, batch_sampler: Any, num_processes: int = 1, process_index: int = 0,
                 split_batches: bool = False, even_batches: bool = True) -> None:
        # deliberately no super().__init__: the wrapped batch sampler decides the batches
        self.batch_sampler = batch_sampler
        self.num_processes, self.process_index = num_processes, process_index
        self.split_batches, self.even_batches = split_batches, even_batches
        # the ignore below: a custom batch sampler may have no batch_size (None); torch's BatchSampler types it int
        self.batch_size = getattr(batch_sampler, "batch_size", None)  # type: ignore[assignment]
        self.drop_last = getattr(batch_sampler, "drop_last", False)
        if split_batches and (self.batch_size is None or self.batch_size % num_processes):
            raise ValueError(f"split_batches=True with batches of {self.batch_size} on {num_processes} processes: the "
                             f"batch size must divide by the number of processes. Use a multiple of {num_processes}, "
                             "or split_batches=False.")

    @property
    def sampler(self) -> Any:  # type: ignore[override]  # read-only: the wrapped batch sampler's (BatchSampler's is an attribute)
        return getattr(self.batch_sampler, "sampler", None)

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over every process."""
        if self.batch_size is None:
            return None
        return self.batch_size if self.split_batches else self.batch_size * self.num_processes

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.batch_sampler, self.sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __len__(self) -> int:
        total = len(self.batch_sampler)
        if self.split_batches:
            if self.even_batches or self.drop_last:
                return total
            try:  # uneven: a process whose slice of the short last batch is empty has one batch less
                last = len(self.batch_sampler.sampler) % self.batch_size
            except (TypeError, AttributeError):
                return total
            part = self.batch_size // self.num_processes
            return total - 1 if last and self.process_index * part >= last else total
        steps, extra = divmod(total, self.num_processes)
        if extra == 0 or self.drop_last:
            return steps
        if self.even_batches:
            return steps + 1
        return steps + (1 if self.process_index < extra else 0)

    def __iter__(self) -> Iterator[Any]:
        batches = _same_order_everywhere(self.batch_sampler, self.num_processes)
        yield from (self._split(batches) if self.split_batches else self._deal(batches))

    def _split(self, batches: Iterator[Any]) -> Iterator[Any]:
        size, rank = self.batch_size, self.process_index
        part = size // self.num_processes
        first: list[Any] = []
        for batch in batches:
            batch = list(batch)
            if not first:
                first = batch
            if len(batch) == size:
                yield batch[rank * part:(rank + 1) * part]
                continue
            if self.drop_last:
                return
            if self.even_batches:  # complete the short last batch with the pass's first samples
                filler = itertools.cycle(first)
                batch = batch + [next(filler) for _ in range(size - len(batch))]
            share = batch[rank * part:(rank + 1) * part]
            if share:
                yield share

    def _deal(self, batches: Iterator[Any]) -> Iterator[Any]:
        world, rank, size = self.num_processes, self.process_index, self.batch_size
        group: list[Any] = []
        first: list[Any] = []  # the samples (or batches, when sizes vary) of the pass's first step
        for index, batch in enumerate(batches):
            if index < world:
                if size is None:
                    first.append(batch)
                else:
                    first.extend(list(batch))
            group.append(batch)
            if len(group) == world and (size is None or len(batch) == size):
                yield group[rank]
                group = []
        if not group or self.drop_last:
            return
        if not self.even_batches:
            if rank < len(group) and len(group[rank]):
                yield group[rank]
            return
        filler = itertools.cycle(first)  # complete the last step with the pass's first samples
        if size is not None:
            group[-1] = list(group[-1]) + [next(filler) for _ in range(size - len(group[-1]))]
        while len(group) < world:
            group.append(next(filler) if size is None else [next(filler) for _ in range(size)])
        yield group[rank]


def _same_order_everywhere(batch_sampler: Any, world: int) -> Iterator[Any]:
    """Iterate ``batch_sampler`` with process 0's random order on every process: a ``RandomSampler``
    with a ``generator`` (``shard_for_processes`` gives one to a sampler without) gets process 0's
    generator state; one whose generator was taken away again draws its seed from torch's global
    stream as it would alone, and process 0's seed is used. A ``SeedableRandomSampler`` needs nothing
    (its order is the seed and the epoch)."""
    sampler = getattr(batch_sampler, "sampler", None)
    if world == 1 or not isinstance(sampler, RandomSampler) or isinstance(sampler, SeedableRandomSampler):
        yield from batch_sampler
        return
    if sampler.generator is not None:
        sampler.generator.set_state(_broadcast_from_main(sampler.generator.get_state()))
        yield from batch_sampler
        return
    seed = int(torch.empty((), dtype=torch.int64).random_().item())  # the draw RandomSampler makes alone
    sampler.generator = torch.Generator().manual_seed(_broadcast_from_main(seed))
    iterator = iter(batch_sampler)
    try:
        first = next(iterator, None)  # the sampler has read its generator now
    finally:
        sampler.generator = None
    if first is None:
        return
    yield first
    yield from iterator


def _concatenate(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([p.reshape(1) if p.dim() == 0 else p for p in parts])
    if isinstance(first, dict):
        return type(first)({k: _concatenate([p[k] for p in parts]) for k in first})
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_concatenate([p[i] for p in parts]) for i in range(len(first))))
    if isinstance(first, (list, tuple)) and first and all(isinstance(x, (torch.Tensor, dict, list, tuple))
                                                         for x in first):
        return type(first)(_concatenate([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, (list, tuple)):
        return type(first)(x for p in parts for x in p)
    raise TypeError(f"dispatch_batches=True: cannot join batches of type {type(first).__name__}; expected tensors, "
                    "or dicts, lists or tuples of them.")


def _length(data: Any) -> int:
    if isinstance(data, torch.Tensor):
        return data.shape[0]
    if isinstance(data, dict):
        return _length(next(iter(data.values())))
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], (torch.Tensor, dict, list, tuple)):
        return _length(data[0])
    return len(data)


def _take(data: Any, index: list[int]) -> Any:
    if isinstance(data, torch.Tensor):
        return data[torch.tensor(index, dtype=torch.long)]
    if isinstance(data, dict):
        return type(data)({k: _take(v, index) for k, v in data.items()})
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(_take(v, index) for v in data))
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], (torch.Tensor, dict, list, tuple)):
        return type(data)(_take(v, index) for v in data)
    return type(data)(data[i] for i in index)


class DataLoaderDispatcher:
    """Process 0 reads ``loader`` and sends every process its share of each step (``dispatch_batches``):
    N batches per step (each process gets one), or with ``split_batches`` one batch split N ways.
    The other processes never read the dataset -- what an ``IterableDataset`` (a stream that cannot
    be indexed per process) needs. One broadcast of the step's batches per step.
    """

    def __init__(self, loader: Any, num_processes: int, process_index: int, split_batches: bool = False,
                 even_batches: bool = True) -> None:
        self.loader = loader
        self.num_processes, self.process_index = num_processes, process_index
        self.split_batches, self.even_batches = split_batches, even_batches
        self.batch_size = getattr(loader, "batch_size", None)
        if split_batches and self.batch_size is not None and self.batch_size % num_processes:
            raise ValueError(f"split_batches=True with DataLoader(batch_size={self.batch_size}) on {num_processes} "
                             f"processes: the batch size must divide by the number of processes.")
        self.real_in_last_step = -1  # samples of the last step that are not repeats (set when it is sent)

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def total_batch_size(self) -> int | None:
        if self.batch_size is None:
            return None
        return self.batch_size if self.split_batches else self.batch_size * self.num_processes

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.loader, getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
                return

    def __len__(self) -> int:
        total = len(self.loader)
        return total if self.split_batches else math.ceil(total / self.num_processes)

    def _steps(self) -> Iterator[Any]:
        """On process 0: each step's data, joined (N batches, or one to split)."""
        per_step = 1 if self.split_batches else self.num_processes
        iterator = iter(self.loader)
        while True:
            batches = list(itertools.islice(iterator, per_step))
            if not batches:
                return
            yield _concatenate(batches) if len(batches) > 1 else batches[0]

    def __iter__(self) -> Iterator[Any]:
        main = self.process_index == 0
        steps = self._steps() if main else None
        current = next(steps, None) if steps is not None else None
        while True:
            if steps is not None:  # main
                upcoming = next(steps, None)
                message = (current, upcoming is None)
            else:
                message = None
            data, last = _broadcast_from_main(message)
            if data is None:
                return
            yield from self._share(data, last)
            if last:
                return
            if main:
                current = upcoming

    def _share(self, data: Any, last: bool) -> Iterator[Any]:
        world, rank = self.num_processes, self.process_index
        total = _length(data)
        per = (self.batch_size // world if self.split_batches else self.batch_size) if self.batch_size else \
            math.ceil(total / world)
        if last:
            self.real_in_last_step = total
        index = list(range(total))
        if last and self.even_batches and total < per * world:
            index += [i % total for i in range(per * world - total)]  # repeat the step's first samples
        share = index[rank * per:(rank + 1) * per]
        if share:
            yield _take(data, share)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def shard_for_processes(loader: Any, num_processes: int, process_index: int, split_batches: bool = False,
                        even_batches: bool = True, dispatch_batches: bool | None = None,
                        use_seedable_sampler: bool = False, data_seed: int | None = None) -> Any:
    """``loader`` rebuilt so this process reads its share, as Accelerate shares it (see the module doc).

    ``dispatch_batches`` defaults to True for an ``IterableDataset`` and False otherwise. On one
    process the loader is returned as it is (only the seedable sampler is put in when asked), and so
    is a loader over a sharded stream (``trainer/data/sharded_stream.py``: it deals its shards to the
    processes itself) unless ``dispatch_batches=True``.
    """
    if not isinstance(loader, DataLoader):
        return loader
    iterable = isinstance(loader.dataset, IterableDataset)
    if iterable and dispatch_batches is not True and is_sharded_stream(loader.dataset):
        return loader  # it deals its shards to the processes itself: each reads its own (sharded_stream.py)
    dispatch = iterable if dispatch_batches is None else dispatch_batches
    if use_seedable_sampler and isinstance(loader.sampler, RandomSampler) \
            and not isinstance(loader.sampler, SeedableRandomSampler) and loader.batch_sampler is not None \
            and type(loader.batch_sampler) is BatchSampler:
        seedable = SeedableRandomSampler(loader.dataset, replacement=loader.sampler.replacement,
                                         num_samples=loader.sampler._num_samples, generator=loader.sampler.generator,
                                         data_seed=data_seed)
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=seedable, drop_last=loader.drop_last,
                            **loader_kwargs(loader))
    if num_processes == 1:
        return loader
    if dispatch:
        return DataLoaderDispatcher(loader, num_processes, process_index, split_batches, even_batches)
    if iterable:
        raise ValueError("dispatch_batches=False with an IterableDataset: its samples cannot be dealt between "
                         "processes by index. Drop dispatch_batches (process 0 then reads the stream and sends each "
                         "process its share), or make __iter__ yield only this process's samples and prepare a "
                         "plain DataLoader of it with dispatch_batches=True left unset on one process.")
    if loader.batch_sampler is None:  # batch_size=None: the sampler yields whole batches (or single samples)
        inner: Any = loader.sampler
    else:
        inner = loader.batch_sampler
    sampler = getattr(inner, "sampler", None)
    if isinstance(sampler, RandomSampler) and not isinstance(sampler, SeedableRandomSampler) \
            and sampler.generator is None:
        # as Accelerate: the shuffle gets a generator of its own, seeded now by one draw from torch's
        # stream; process 0's state of it is used by every process at each pass
        sampler.generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
    shard = BatchSamplerShard(inner, num_processes, process_index, split_batches, even_batches)
    kwargs = loader_kwargs(loader)
    if loader.batch_sampler is None:  # each item of the sampler is fetched as it is (an automatic batch or not)
        return DataLoader(loader.dataset, batch_size=None, sampler=_Flatten(shard), **kwargs)
    return DataLoader(loader.dataset, batch_sampler=shard, **kwargs)


def stateful_loader(loader: Any, num_processes: int, dispatch_batches: bool | None) -> Any:
    """``loader`` as ``use_stateful_dataloader=True`` prepares it: over an ``IterableDataset``, one whose
    position can be saved (torchdata's ``StatefulDataLoader``, built from a plain ``DataLoader``'s settings);
    a map-style loader as it is (its position is the batches handed out, skipped by index on a resume).
    Refused where each process's position cannot be saved: a stream process 0 reads for every process."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.dataset, IterableDataset):
        return loader
    kind = type(loader.dataset).__name__
    if num_processes > 1 and (dispatch_batches or not is_sharded_stream(loader.dataset)):
        raise ValueError(
            f"DataLoaderConfiguration(use_stateful_dataloader=True) with a DataLoader over {kind} on {num_processes} "
            f"processes, which process 0 reads for every process (dispatch_batches"
            f"{'=True' if dispatch_batches else ' is the default for an IterableDataset'}): a position is saved "
            "for a loader each process reads itself. Give the dataset the sharded-stream protocol (shard_sizes(), "
            "read_ranges(ranges), a 'shard_progress' entry in its state_dict(): trainer/data/sharded_stream.py, "
            "examples/tar_shards.py) so that it deals its shards to the processes, "
            f"{'drop dispatch_batches=True, ' if dispatch_batches else ''}or leave use_stateful_dataloader off "
            "(accelerator.skip_first_batches then reads the trained batches again).")
    if callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None)):
        return loader  # a StatefulDataLoader already
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        raise ImportError("DataLoaderConfiguration(use_stateful_dataloader=True) saves a stream's position with "
                          "torchdata's StatefulDataLoader, and torchdata is not installed. Install it: "
                          "pip install 'torchdata>=0.8'.") from None
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        raise ValueError(f"DataLoaderConfiguration(use_stateful_dataloader=True): the DataLoader over {kind} has a "
                         f"custom batch_sampler ({type(loader.batch_sampler).__name__}), which cannot be rebuilt as a "
                         "StatefulDataLoader. Pass a torchdata StatefulDataLoader yourself.")
    return StatefulDataLoader(loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last,
                              **loader_kwargs(loader))


class _Flatten:
    """A BatchSamplerShard over a sampler whose items are batches, yielded one item per fetch."""

    def __init__(self, shard: BatchSamplerShard) -> None:
        self.batch_sampler = shard

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batch_sampler)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def find_shard(loader: Any) -> Any:
    """The ``BatchSamplerShard`` or ``DataLoaderDispatcher`` inside a prepared loader (or None)."""
    todo, seen = [loader], 0
    while todo and seen < 16:
        obj = todo.pop()
        seen += 1
        if isinstance(obj, (BatchSamplerShard, DataLoaderDispatcher)):
            return obj
        for name in ("loader", "batch_sampler", "sampler"):
            try:
                inner = vars(obj).get(name) if hasattr(obj, "__dict__") else None
            except TypeError:
                inner = None
            if inner is None and isinstance(obj, DataLoader):
                inner = getattr(obj, name, None)
            if inner is not None:
                todo.append(inner)
    return None


class DataLoaderShard:
    """What the free ``prepare_data_loader`` returns: the sharded loader, batches moved to ``device``
    when ``put_on_device``; every other attribute is the loader's (``batch_sampler``, ``dataset``, ...)."""

    def __init__(self, loader: Any, device: Any = None, non_blocking: bool = False) -> None:
        self.loader = loader
        self.device = device
        self.non_blocking = non_blocking

    def __iter__(self) -> Iterator[Any]:
        from trainer.strategies.support import apply_to_tensors

        for batch in self.loader:
            if self.device is not None:
                batch = apply_to_tensors(batch, lambda t: t.to(self.device, non_blocking=self.non_blocking))
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        for obj in (getattr(self.loader, "batch_sampler", None), getattr(self.loader, "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
                return

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # while unpickling, before __init__ ran
            raise AttributeError(name)
        return getattr(self.loader, name)


_UNSUPPORTED = {"rng_types": "the order is drawn on process 0 at each pass and sent to the others (or seeded: "
                "use_seedable_sampler=True); drop rng_types",
                "slice_fn_for_dispatch": "batches are sliced along their first dimension",
                "use_stateful_dataloader": "a loader's position is saved by Accelerator.save_state: prepare it with "
                "Accelerator(dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True)).prepare(loader)"}


def prepare_data_loader(dataloader: DataLoader, device: Any = None, num_processes: int | None = None,
                        process_index: int | None = None, split_batches: bool = False, put_on_device: bool = False,
                        rng_types: Any = None, dispatch_batches: bool | None = None, even_batches: bool = True,
                        slice_fn_for_dispatch: Any = None, use_seedable_sampler: bool = False,
                        data_seed: int | None = None, non_blocking: bool = False,
                        use_stateful_dataloader: bool = False) -> DataLoaderShard:
    """Accelerate's free function: ``dataloader`` sharded for process ``process_index`` of
    ``num_processes`` (both read from the launcher's environment when None), batches moved to
    ``device`` when ``put_on_device``. Without an Accelerator: no accumulation bookkeeping; inside a
    loop driven by an Accelerator, use ``accelerator.prepare(dataloader)``.

    Example:
        >>> loader = prepare_data_loader(DataLoader(range(8), batch_size=2), num_processes=1, process_index=0)
        >>> [b.tolist() for b in loader]
        [[0, 1], [2, 3], [4, 5], [6, 7]]
    """
    for name, value in (("rng_types", rng_types), ("slice_fn_for_dispatch", slice_fn_for_dispatch),
                        ("use_stateful_dataloader", use_stateful_dataloader or None)):
        if value is not None:
            raise ValueError(f"prepare_data_loader({name}={value!r:.60}): not supported: {_UNSUPPORTED[name]}.")
    world, rank = _world_and_rank(num_processes, process_index)
    if device is None and put_on_device:
        from trainer.accelerate.state import PartialState

        device = PartialState().device
    sharded = shard_for_processes(dataloader, world, rank, split_batches=split_batches, even_batches=even_batches,
                                  dispatch_batches=dispatch_batches, use_seedable_sampler=use_seedable_sampler,
                                  data_seed=data_seed)
    return DataLoaderShard(sharded, device if put_on_device else None, non_blocking)


def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
    """``dataloader`` from its batch ``num_batches`` on (the same order; skipped batches of a map-style
    dataset are not read). A loader the Accelerator prepared stays prepared (its
    ``accelerator.skip_first_batches``, which also resumes the order ``load_state`` restored).

    Example:
        >>> [b.tolist() for b in skip_first_batches(DataLoader(range(6), batch_size=2), 2)]
        [[4, 5]]
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0:
        raise ValueError(f"skip_first_batches(dataloader, num_batches={num_batches!r}): expected an int >= 0.")
    accelerator = getattr(dataloader, "_accelerator", None)
    if accelerator is not None:
        return accelerator.skip_first_batches(dataloader, num_batches)
    if isinstance(dataloader, DataLoaderShard):
        return DataLoaderShard(skip_batches(dataloader.loader, num_batches), dataloader.device,
                               dataloader.non_blocking)
    return skip_batches(dataloader, num_batches)


__all__ = ["BatchSamplerShard", "DataLoaderDispatcher", "DataLoaderShard", "SeedableRandomSampler",
           "prepare_data_loader", "skip_first_batches"]
