"""The loop's state: the small object that a checkpoint saves and a resume restores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TrainerState:
    """Counters of one ``fit``.

    ``global_step`` counts optimizer steps (not micro-batches, not processes);
    ``batch_idx`` is the position inside the current epoch (micro-batches done).
    """

    stage: str = "idle"          # "fit" | "sanity_check" | "validate" | "test" | "predict" | "idle"
    global_step: int = 0
    current_epoch: int = 0
    batch_idx: int = 0
    batches_seen: int = 0        # training batches over all epochs
    samples_seen: int = 0
    should_stop: bool = False
    val_pending: bool = False    # validation is due after the current batch (kept for resume)
    epoch_trained: bool = False  # every batch of the current epoch is done, only its end remains (resume)
