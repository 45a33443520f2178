"""``GradientAccumulationScheduler``: how many micro-batches make an optimizer step, epoch by epoch."""

from __future__ import annotations

from typing import Any

from .base import Callback
from .view import TrainerView


class GradientAccumulationScheduler(Callback):
    """Accumulate gradients over ``scheduling[e]`` micro-batches from epoch ``e`` (counted from 0) on.

    Each epoch's windows are exact, as with ``Trainer(accumulate_grad_batches=k)``: a step equals one
    batch of the window's items, a short last window included. Epochs before the first key use 1.

    Example:
        >>> GradientAccumulationScheduler(scheduling={0: 4, 5: 2, 10: 1})  # doctest: +SKIP

    Refused, as in Lightning, with manual optimization, together with ``Trainer(accumulate_grad_batches=k)``
    for k > 1, and by a strategy that fixes the accumulation in its engine (DeepSpeed).

    Args:
        scheduling: ``{epoch: accumulate_grad_batches}``; epochs are ints >= 0, factors ints >= 1.
    """

    def __init__(self, scheduling: dict[int, int]) -> None:
        if not isinstance(scheduling, dict) or not scheduling:
            raise TypeError(f"GradientAccumulationScheduler(scheduling={scheduling!r}): expected a non-empty dict "
                            "{epoch: accumulate_grad_batches}, e.g. {0: 4, 5: 2}.")
        for epoch, k in scheduling.items():
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                raise ValueError(f"GradientAccumulationScheduler(scheduling={scheduling!r}): the key {epoch!r} is not "
                                 "an epoch; keys are ints >= 0 (epochs counted from 0).")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"GradientAccumulationScheduler(scheduling={scheduling!r}): epoch {epoch} has "
                                 f"{k!r} micro-batches per step; expected an int >= 1.")
        self.scheduling = {0: 1, **dict(sorted(scheduling.items()))} if 0 not in scheduling \
            else dict(sorted(scheduling.items()))

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor of ``epoch``: that of the largest scheduled epoch not after it."""
        return next(k for e, k in reversed(self.scheduling.items()) if e <= epoch)

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        if not getattr(module, "automatic_optimization", True):
            raise ValueError(f"GradientAccumulationScheduler with manual optimization ({type(module).__name__}."
                             "automatic_optimization = False): the module steps its optimizers itself, so the loop "
                             "has no accumulation to schedule. Accumulate in training_step, or remove the callback.")
        if trainer.config.accumulate_grad_batches != 1:
            raise ValueError(f"Trainer(accumulate_grad_batches={trainer.config.accumulate_grad_batches}) together with "
                             f"GradientAccumulationScheduler({self.scheduling}): use one of them. Put the constant "
                             "factor in the schedule (e.g. {0: k}) and leave accumulate_grad_batches at 1.")
        trainer.fit_loop.set_accumulate_grad_batches(self.get_accumulate_grad_batches(trainer.current_epoch))

    def on_train_epoch_start(self, trainer: TrainerView, module: Any) -> None:
        trainer.fit_loop.set_accumulate_grad_batches(self.get_accumulate_grad_batches(trainer.current_epoch))
