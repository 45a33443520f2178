"""Where a hand-written loop stands: which prepared dataloader is being iterated, and whether
this micro-step synchronises gradients (Accelerate's ``GradientState``, one per Accelerator).

Dataloaders form a stack: iterating a second prepared loader inside the training loop (the
everyday "evaluate every N steps") pushes it, and its end pops it, so the outer loader is
active again with its position and the accumulation window untouched.
"""

from __future__ import annotations

from typing import Any


class GradientState:
    """The Accelerator's view of the data and of gradient synchronisation.

    Attributes:
        sync_gradients: True on the micro-step that closes an accumulation window (and outside
            ``accumulate()``): gradients are all-reduced and prepared optimizers step.
        num_steps: micro-batches per accumulation window.
        sync_with_dataloader: close the window at the end of a prepared dataloader.
        adjust_scheduler: prepared schedulers count optimizer steps, not micro-batches.
        sync_each_batch: all-reduce gradients on every micro-batch (to save memory), while
            prepared optimizers still step once per window.
    """

    def __init__(self, num_steps: int = 1, sync_with_dataloader: bool = True, adjust_scheduler: bool = True,
                 sync_each_batch: bool = False) -> None:
        self.num_steps = num_steps
        self.sync_with_dataloader = sync_with_dataloader
        self.adjust_scheduler = adjust_scheduler
        self.sync_each_batch = sync_each_batch
        self.sync_gradients = True
        self.dataloader_references: list[Any] = [None]

    @property
    def plugin_kwargs(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "adjust_scheduler": self.adjust_scheduler,
                "sync_with_dataloader": self.sync_with_dataloader, "sync_each_batch": self.sync_each_batch}

    @property
    def active_dataloader(self) -> Any:
        """The innermost prepared dataloader being iterated, or None."""
        return self.dataloader_references[-1]

    @property
    def in_dataloader(self) -> bool:
        return self.active_dataloader is not None

    @property
    def end_of_dataloader(self) -> bool:
        """True while the active dataloader's last batch is being processed."""
        loader = self.active_dataloader
        return loader is not None and loader.end_of_dataloader

    @property
    def remainder(self) -> int:
        """Real samples in the active dataloader's last global batch (-1: unknown or none)."""
        loader = self.active_dataloader
        return -1 if loader is None else loader.remainder

    def _add_dataloader(self, loader: Any) -> None:
        self.dataloader_references.append(loader)

    def _remove_dataloader(self, loader: Any) -> None:
        """Remove ``loader`` (the innermost occurrence: a loader may be nested in itself)."""
        for i in range(len(self.dataloader_references) - 1, 0, -1):
            if self.dataloader_references[i] is loader:
                del self.dataloader_references[i]
                return

    def _set_sync_gradients(self, sync_gradients: bool) -> None:
        self.sync_gradients = sync_gradients

    @staticmethod
    def _reset_state() -> None:
        """Accelerate resets its process-wide singleton with this; here every Accelerator owns
        its state, so there is nothing to reset."""

    def __repr__(self) -> str:
        return (f"GradientState(sync_gradients={self.sync_gradients}, num_steps={self.num_steps}, "
                f"in_dataloader={self.in_dataloader}, end_of_dataloader={self.end_of_dataloader}, "
                f"remainder={self.remainder})")
