"""``BasePredictionWriter``: write predictions as they come (per batch) or at the end of predict."""

from __future__ import annotations

from typing import Any

from .base import Callback
from .view import TrainerView

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class BasePredictionWriter(Callback):
    """Subclass it and implement ``write_on_batch_end`` and/or ``write_on_epoch_end``.

    With ``trainer.predict(..., return_predictions=False)`` and ``write_interval="batch"`` nothing is
    held in memory: each batch's predictions are written and dropped. With an epoch interval the
    predictions of the whole run are kept until ``write_on_epoch_end`` (as in Lightning).

    Args:
        write_interval: "batch", "epoch" or "batch_and_epoch".

    Example:
        >>> class ToFiles(BasePredictionWriter):
        ...     def write_on_batch_end(self, trainer, module, prediction, batch_indices, batch, batch_idx,
        ...                            dataloader_idx):
        ...         torch.save(prediction, f"pred_{trainer.global_rank}_{batch_idx}.pt")
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ValueError(f"BasePredictionWriter(write_interval={write_interval!r}): expected one of "
                             f"{', '.join(map(repr, _INTERVALS))}.")
        self.write_interval = write_interval

    @property
    def writes_on_batch(self) -> bool:
        return self.write_interval in ("batch", "batch_and_epoch")

    @property
    def writes_on_epoch(self) -> bool:
        return self.write_interval in ("epoch", "batch_and_epoch")

    def write_on_batch_end(self, trainer: TrainerView, module: Any, prediction: Any, batch_indices: list[int] | None,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Write one batch's predictions; ``batch_indices``: the dataset indices of its samples."""
        raise NotImplementedError(f"{type(self).__name__}(write_interval={self.write_interval!r}) must implement "
                                  "write_on_batch_end.")

    def write_on_epoch_end(self, trainer: TrainerView, module: Any, predictions: list[Any],
                           batch_indices: list[Any]) -> None:
        """Write every prediction at once (a list per dataloader when there are several)."""
        raise NotImplementedError(f"{type(self).__name__}(write_interval={self.write_interval!r}) must implement "
                                  "write_on_epoch_end.")

    def on_predict_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self.writes_on_batch:
            indices = trainer.predict_batch_indices
            batch_indices = indices[dataloader_idx][batch_idx] if indices and indices[dataloader_idx] else None
            self.write_on_batch_end(trainer, module, outputs, batch_indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        if self.writes_on_epoch:
            predictions, indices = trainer.predictions, trainer.predict_batch_indices
            assert predictions is not None and indices is not None  # kept while an epoch-end writer is attached
            if len(predictions) == 1:
                predictions, indices = predictions[0], indices[0]
            self.write_on_epoch_end(trainer, module, predictions, indices)
