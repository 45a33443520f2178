"""The loop's state (``TrainerState``: the small object that a checkpoint saves and a resume restores), and
Accelerate's state names (``AcceleratorState``, ``GradientState``, ``PartialState``; trainer/accelerate/state.py)
under Accelerate's path, for hand-written loops."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.accelerate.state import AcceleratorState, GradientState, PartialState

__all__ = ["TrainerState", "AcceleratorState", "GradientState", "PartialState"]


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
    stop_reason: str | None = None  # why the last fit ended, in words (loops/stop_reason.py); not checkpointed
    # Lightning's TrainerStatus, not checkpointed: "initializing" until a stage runs, then "running", and
    # "finished" (it returned) or "interrupted" (it raised, Ctrl-C, SIGTERM)
    status: str = "initializing"

    @property
    def finished(self) -> bool:
        """The last stage returned (Lightning's ``trainer.state.finished``)."""
        return self.status == "finished"
