"""A stream sharded by files or ranges, and the rest of its epoch re-dealt over another number of processes.

A checkpoint taken inside an epoch of a stream holds every rank's loader position (loader_state.py). On
the same number of processes each rank loads its own. On another number, a position alone is useless
(it is one process's place in its share of the shards), so the Trainer asks the dataset how it is
sharded. The **sharded-stream protocol** -- an ``IterableDataset`` with these, besides its own reading:

``shard_sizes() -> dict[str, int]``
    Every shard of the whole dataset (not only this process's share), by a name stable across runs
    (e.g. the file's name), with its number of samples; the same on every process.
``state_dict() -> dict`` with a ``"shard_progress"`` entry
    ``{shard name: [[start, stop], ...]}``: the samples of each shard this reader has handed out in the
    current pass, as index ranges (a reader that reads shard ``s`` in order and stopped after 3 samples
    says ``{"s": [[0, 3]]}``; a shard it finished, ``[[0, size]]``). Only the shards it touched. With
    ``load_state_dict(state)`` it resumes its own reading there (torchdata's ``StatefulDataLoader``
    saves it for each worker; read in the main process, the Trainer saves the dataset's).
``read_ranges(ranges) -> Iterator``
    The samples of ``ranges`` -- ``(shard name, start, stop)`` triples -- in that order, nothing else
    (seeking over the rest, so nothing outside them is read).

Resumed on ``M`` processes, the Trainer takes the union of every saved rank's (and loader worker's)
``shard_progress``: those samples were trained. The rest of the epoch -- the unread tail of each open
shard and every untouched shard, in ``shard_sizes()`` order -- is dealt as the map-style re-deal deals
its rest (reshard.py): cut into global batches of ``M x batch_size`` consecutive samples, rank ``r``
taking the ``r``-th of ``M`` consecutive runs of each. Every rank reads only its runs, through
``read_ranges`` in its loader's workers (worker ``w`` of ``W`` reads runs ``w, w + W, ...``; the loader
hands them out in order), so **every sample of the interrupted epoch is trained exactly once** over
the two runs and none is read again.

Lockstep: ranks take the same number of steps, with no padding and nothing dropped. The last global
batch may not divide by ``M``: its runs then differ by one sample (one of fewer than ``M`` samples
joins the batch before), and that step's loss is weighted per sample so that it equals one process
training the whole global batch (as in reshard.py). Fewer remaining samples than processes is
refused. ``drop_last`` drops nothing from the rest. The next epoch is read as the dataset deals it.

A checkpoint inside the re-dealt rest records the union trained so far (``loops.stream_rest``), and a
resume deals what remains again, on any number of processes; on the same number it continues with
the very same batches.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer.logs.console import rank_zero_info
from trainer.data.data_position import loader_kwargs
from trainer.data.reshard import DealtRest, check_weighting, deal, loss_shares
from trainer.strategies.checkpoint_io import CheckpointError

PROTOCOL = ("shard_sizes", "read_ranges", "state_dict", "load_state_dict")
Ranges = dict[str, list[list[int]]]  # shard name -> sorted, disjoint [start, stop) ranges


def missing_methods(dataset: Any) -> list[str]:
    """The protocol's methods ``dataset`` lacks (empty: it is a sharded stream)."""
    return [name for name in PROTOCOL if not callable(getattr(dataset, name, None))]


def progress_in(position: Any) -> list[Ranges]:
    """Every ``shard_progress`` inside a saved loader position: the dataset's own state, or each of a
    ``StatefulDataLoader``'s worker (and main-process) dataset states, wherever they nest."""
    found: list[Ranges] = []
    if isinstance(position, dict):
        if isinstance(position.get("shard_progress"), dict):
            found.append(position["shard_progress"])
        for key, value in position.items():
            if key != "shard_progress":
                found += progress_in(value)
    elif isinstance(position, (list, tuple)):
        for value in position:
            found += progress_in(value)
    return found


def merge(ranges: Iterable[Iterable[int]]) -> list[list[int]]:
    """Sorted, disjoint ``[start, stop)`` ranges covering the same samples (empty ones dropped)."""
    out: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in ranges):
        if stop <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return out


def union(*maps: Ranges) -> Ranges:
    names = dict.fromkeys(name for m in maps for name in m)
    return {name: merge(r for m in maps for r in m.get(name, [])) for name in names}


def with_addresses(consumed: Ranges, addresses: Iterable[tuple[str, int]]) -> Ranges:
    """``consumed`` and the samples ``addresses`` (``(shard, index)`` pairs)."""
    return union(consumed, {name: [[i, i + 1] for _, i in group]
                            for name, group in itertools.groupby(sorted(addresses), key=lambda a: a[0])})


def remaining(sizes: dict[str, int], consumed: Ranges) -> list[tuple[str, int]]:
    """The samples not in ``consumed``, shard by shard in ``sizes``' order, each shard in index order."""
    rest: list[tuple[str, int]] = []
    for name, size in sizes.items():
        start = 0
        for a, b in merge(consumed.get(name, [])) + [[size, size]]:
            rest += [(name, i) for i in range(start, min(a, size))]
            start = max(start, b)
    return rest


def as_ranges(addresses: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """``addresses`` as ``(shard, start, stop)`` runs of consecutive samples, in the same order."""
    runs: list[tuple[str, int, int]] = []
    for name, i in addresses:
        if runs and runs[-1][0] == name and runs[-1][2] == i:
            runs[-1] = (name, runs[-1][1], i + 1)
        else:
            runs.append((name, i, i + 1))
    return runs


def check_progress(consumed: Ranges, sizes: dict[str, int], where: str) -> None:
    for name, ranges in consumed.items():
        if name not in sizes:
            raise _cannot(f"{where} names shard {name!r}, which shard_sizes() does not list (the shards changed "
                          f"since it was saved?); listed: {_some(sizes)}")
        if ranges and ranges[-1][1] > sizes[name]:
            raise _cannot(f"{where} has samples up to {ranges[-1][1]} of shard {name!r}, which shard_sizes() "
                          f"says holds {sizes[name]}")


class PlannedPieces(IterableDataset):
    """This rank's runs of the re-dealt rest, one list of samples per run (the loader collates each into
    a batch); worker ``w`` of ``W`` reads runs ``w, w + W, ...``, so the loader hands them out in order."""

    def __init__(self, dataset: Any, pieces: list[list[tuple[str, int, int]]]) -> None:
        self.dataset, self.pieces = dataset, pieces

    def __iter__(self) -> Iterator[list[Any]]:
        info = get_worker_info()
        mine = self.pieces[info.id::info.num_workers] if info is not None else self.pieces
        samples = iter(self.dataset.read_ranges([r for piece in mine for r in piece]))
        for piece in mine:
            size = sum(stop - start for _, start, stop in piece)
            batch = list(itertools.islice(samples, size))
            if len(batch) != size:
                raise RuntimeError(f"{type(self.dataset).__name__}.read_ranges({piece}) yielded {len(batch)} "
                                   f"sample(s) for ranges holding {size}: read_ranges must yield exactly the samples "
                                   "of the ranges it is given, as shard_sizes() counts them.")
            yield batch


class StreamRest(DealtRest):
    """The rest of a stream's epoch dealt over this run's processes (the loop uses it as it uses a
    reshard.Reshard: ``loader``, ``weighted``, ``state``, ``start``, ``end``)."""

    checkpoint_key = "stream_rest"

    def __init__(self, consumed: Ranges, steps: list[list[list[tuple[str, int]]]], rank: int, accumulation: int,
                 epoch: int, start: int) -> None:
        super().__init__(steps, accumulation, epoch, start)
        self.consumed_before = consumed
        self.pieces = [as_ranges(step[rank]) for step in steps]

    def state(self, batch_idx: int) -> dict[str, Any]:
        """What a checkpoint taken at ``batch_idx`` records: every sample of the epoch trained so far."""
        done = self.steps[:min(max(batch_idx - self.start, 0), len(self.steps))]
        return {"consumed": with_addresses(self.consumed_before, (a for step in done for run in step for a in run))}

    def loader(self, loader: Any, batch_idx: int) -> DataLoader:
        kwargs = {**loader_kwargs(loader), "persistent_workers": False}
        return DataLoader(PlannedPieces(loader.dataset, self.pieces[batch_idx - self.start:]), batch_size=None,
                          **kwargs)


def pending_rest(loops: dict[str, Any], path: str, saved_world: int, world_size: int) -> dict[str, Any] | None:
    """What a resume must re-deal from the checkpoint's ``loops`` (None: nothing; the rank's own position,
    if any, is loaded as saved): a stream epoch saved inside by another number of processes, or inside
    a rest re-dealt before."""
    if not loops.get("batch_idx") or loops.get("epoch_trained"):
        return None
    rest, positions = loops.get("stream_rest"), loops.get("loader_positions")
    if rest is None and (not positions or saved_world == world_size):
        return None
    if rest is not None and not (isinstance(rest, dict) and isinstance(rest.get("consumed"), dict)):
        raise CheckpointError(f"{path!r}: loops.stream_rest is {type(rest).__name__} {rest!r:.80}; expected a dict "
                              "with 'consumed': {shard name: [[start, stop], ...]}, as the Trainer writes it. Resume "
                              "from another checkpoint (an epoch-end one).")
    return {"path": path, "saved_world": saved_world, "batch_idx": loops["batch_idx"],
            "consumed": None if rest is None else rest["consumed"], "positions": positions}


def plan_stream_resume(loop: Any, loader: Any, pending: dict[str, Any]) -> StreamRest | None:
    """The re-dealt rest of a stream's epoch (None: nothing of it remains). Raises, naming the reason and
    the fix, where the dataset does not say how it is sharded. ``loop``: the FitLoop."""
    trainer, epoch = loop.trainer, loop.state.current_epoch
    strategy, cfg = trainer.accelerator.strategy, trainer.config
    world, saved_world, path = strategy.world_size, pending["saved_world"], pending["path"]
    try:
        kind = check_stream_loader(loader)
        if cfg.limit_train_batches not in (None, 1.0) or cfg.overfit_batches:
            raise _cannot("limit_train_batches/overfit_batches cut the epoch by a number of batches per process")
        sizes, consumed, rest = untrained(loader, pending, kind)
        if not rest:
            return None
        steps = deal(rest, world, loader.batch_size)
        check_weighting(trainer.module, loss_shares(steps, strategy.global_rank, cfg.accumulate_grad_batches))
    except CheckpointError as err:
        raise CheckpointError(
            f"{path!r} was saved inside epoch {epoch} (batch_idx {pending['batch_idx']}) with the training loader's "
            f"own position on each of {saved_world} process(es); this run has {world}, and {err}. Or resume with "
            f"{saved_world} process(es), or from a checkpoint taken at an epoch end "
            "(ModelCheckpoint(save_on_train_epoch_end=True)).") from None
    done = sum(stop - start for ranges in consumed.values() for start, stop in ranges)
    # batch_idx goes on from the saved one on the same number of processes (a rest re-dealt before);
    # else it is where the samples trained so far would put it here, at least 1 (inside the epoch)
    start = pending["batch_idx"] if saved_world == world else max(1, math.ceil(done / (world * loader.batch_size)))
    say_redealt(kind, sizes, rest, done, saved_world, world, len(steps), loader.batch_size, f"epoch {epoch}")
    return StreamRest(consumed, steps, strategy.global_rank, cfg.accumulate_grad_batches, epoch, start)


def check_stream_loader(loader: Any) -> str:
    """The dataset's type name, when ``loader`` reads a sharded stream whose rest can be dealt; raises the
    reason (CheckpointError) otherwise. Both doors call it (the Trainer's resume, Accelerator.load_state)."""
    dataset = getattr(loader, "dataset", None)
    kind = type(dataset if dataset is not None else loader).__name__
    if not isinstance(loader, DataLoader) or not isinstance(dataset, IterableDataset):
        raise _cannot(f"the training data is now {kind}, not a DataLoader over an IterableDataset as when it was "
                      "saved")
    lacks = missing_methods(dataset)
    if lacks:
        raise _cannot(f"{kind} does not say how it is sharded (it has no {', '.join(lacks)}). A dataset sharded "
                      "by files or ranges can be re-dealt: give it shard_sizes(), read_ranges(ranges) and a "
                      "'shard_progress' entry in its state_dict() -- the sharded-stream protocol in "
                      "trainer/data/sharded_stream.py; examples/tar_shards.py implements it")
    if loader.batch_size is None:
        raise _cannot(f"the training DataLoader has batch_size=None ({kind} makes its own batches), so its "
                      "samples cannot be dealt into batches")
    return kind


def untrained(loader: Any, pending: dict[str, Any], kind: str) -> tuple[dict[str, int], Ranges, list[tuple[str, int]]]:
    """``(shard sizes, samples trained, samples left in shard order)`` of the epoch ``pending`` stopped in:
    its ``consumed`` (a rest re-dealt before) or the union of every saved rank's ``positions``."""
    sizes = {str(k): int(v) for k, v in loader.dataset.shard_sizes().items()}
    consumed = pending["consumed"]
    if consumed is None:
        consumed = _trained_by_every_rank(pending["positions"] or {}, pending["saved_world"], kind)
    consumed = union(consumed)
    check_progress(consumed, sizes, "the checkpoint's position")
    return sizes, consumed, remaining(sizes, consumed)


def say_redealt(kind: str, sizes: dict[str, int], rest: list[tuple[str, int]], done: int, saved_world: int,
                world: int, steps: int, batch_size: int, where: str) -> None:
    rank_zero_info(f"Resuming inside {where}, saved by {saved_world} process(es): {kind}'s {len(rest)} "
                   f"untrained sample(s) (of {sum(sizes.values())}, in {len({a[0] for a in rest})} of its "
                   f"{len(sizes)} shards) are dealt over {world} in {steps} step(s) of up to {world} x "
                   f"{batch_size}; the {done} trained are not read again.")


def _trained_by_every_rank(positions: dict[Any, Any], saved_world: int, kind: str) -> Ranges:
    trained: list[Ranges] = []
    for rank in range(saved_world):
        if rank not in positions:
            raise _cannot(f"the checkpoint holds no loader position of rank {rank}")
        found = progress_in(positions[rank])
        if not found:
            raise _cannot(f"rank {rank}'s saved position has no 'shard_progress' ({kind}.state_dict() gave none "
                          "when it was saved), so what it trained is not known. Give its state_dict() a "
                          "'shard_progress' entry -- the sharded-stream protocol in trainer/data/sharded_stream.py")
        for progress in found:
            trained.append({str(name): merge(ranges) for name, ranges in progress.items()})
    return union(*trained)


def _some(sizes: dict[str, int]) -> str:
    names = list(sizes)
    return ", ".join(map(repr, names[:4])) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")


def _cannot(reason: str) -> CheckpointError:
    return CheckpointError(f"the rest of the epoch cannot be re-dealt: {reason}")
