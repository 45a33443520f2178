"""Resuming a stream where it stopped: the training loader's own saved position.

A loader that can save its position -- ``state_dict()``/``load_state_dict()`` on the loader
(torchdata's ``StatefulDataLoader``, which also saves its workers' dataset states) or on an
``IterableDataset`` read in the main process (``num_workers=0``) -- has that state taken right after
each batch is fetched (before the loop looks one batch ahead), kept with the batch, and written in
the checkpoint (``loops.loader_positions``, one per rank). A resume inside the epoch loads it, so
the loader reads only what was not trained. Any other iterable is resumed by reading and discarding
the trained batches again (data_position.py), and the resume says so once, with the count.
Positions saved inside an epoch by another number of processes: the rest of the epoch is re-dealt when
the dataset says how it is sharded (sharded_stream.py), else refused with the reason.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from torch.utils.data import DataLoader, IterableDataset

from trainer.logs.console import rank_zero_info


def _has_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def saveable(loader: Any) -> Any:
    """What saves ``loader``'s position: the loader itself (StatefulDataLoader), or its iterable dataset
    when that has the methods and is read in this process; None when nothing can."""
    from trainer.accelerate.wrappers import PreparedDataLoader

    if loader is None or isinstance(loader, PreparedDataLoader):  # its state is the pass's epoch, not a position
        return None
    if _has_state(loader):
        return loader
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, IterableDataset) and _has_state(dataset) and getattr(loader, "num_workers", 0) == 0:
        return dataset
    return None


def with_positions(batches: Iterable[Any], owner: Any) -> Iterator[tuple[Any, Any]]:
    """``(batch, position after it)`` for each batch: the state is read as the batch arrives."""
    for batch in batches:
        yield batch, owner.state_dict()


def track(items: Iterable[tuple[tuple[Any, Any], bool]], loop: Any) -> Iterator[tuple[Any, bool]]:
    """``(batch, is_last)`` again; ``loop.loader_position`` is the position after the batch handed out."""
    for (batch, position), is_last in items:
        loop.loader_position = position
        yield batch, is_last


def reads_again(loader: Any) -> bool:
    """Whether skipping batches of ``loader`` reads them (anything but a map-style DataLoader)."""
    return not (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset))


def say_rereading(loader: Any, skip: int, epoch: int) -> None:
    if skip and reads_again(loader):
        kind = type(getattr(loader, "dataset", loader)).__name__
        rank_zero_info(f"Resuming inside epoch {epoch}: the training data ({kind}) cannot save its position, so its "
                       f"first {skip} batch(es) are read again and discarded. A loader with state_dict()/"
                       "load_state_dict() (torchdata's StatefulDataLoader, or an IterableDataset that has them) "
                       "resumes without reading them.")


def gather_positions(trainer: Any) -> dict[int, Any] | None:
    """Every rank's loader position (call on every rank); None when the training loader keeps none."""
    position = getattr(trainer.fit_loop, "loader_position", None)
    if position is None:
        return None
    return dict(enumerate(trainer.accelerator.strategy.all_gather_object(position)))


def position_to_resume(trainer: Any, ckpt: dict[str, Any], path: str) -> Any:
    """This rank's saved loader position, when the checkpoint has one for this number of processes.
    Saved inside an epoch by another number (or inside a rest re-dealt before), the rest of the epoch
    is re-dealt instead (sharded_stream.py): the loop is told so (``resume_stream``) and None returned."""
    from trainer.data.sharded_stream import pending_rest

    loops = ckpt.get("loops") or {}
    positions = loops.get("loader_positions")
    saved_world = (ckpt.get("metadata") or {}).get("world_size", 1)
    pending = pending_rest(loops, path, saved_world, trainer.accelerator.strategy.world_size)
    if pending is not None:
        trainer.fit_loop.resume_stream = pending
        trainer.fit_loop.resume_order = None  # not an order to replay by index (reshard.py)
        return None
    if not positions or not loops.get("batch_idx") or loops.get("epoch_trained"):
        return None
    return positions.get(trainer.accelerator.strategy.global_rank)
