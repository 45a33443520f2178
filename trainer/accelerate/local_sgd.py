"""Accelerate's ``LocalSGD``: train without the per-step gradient all-reduce and average the model's
parameters over the processes every ``local_sgd_steps`` optimizer steps (and on leaving the block).

Example:
    >>> with LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=8) as local_sgd:  # doctest: +SKIP
    ...     for batch in loader:
    ...         with accelerator.accumulate(model):
    ...             accelerator.backward(model(batch).mean())
    ...             optimizer.step(); optimizer.zero_grad()
    ...             local_sgd.step()
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch



class LocalSGD:
    """Inside ``with LocalSGD(...)`` the model skips the gradient all-reduce (``accelerator.no_sync``);
    ``step()`` (call it after each optimizer step) averages the parameters every ``local_sgd_steps``
    calls, and leaving the block averages them once more. A no-op on one process or with
    ``enabled=False``. Sharded strategies (FSDP, DeepSpeed) are refused: their parameters are shards.

    Args:
        accelerator: the Accelerator that prepared ``model``.
        model: the prepared model.
        local_sgd_steps: optimizer steps between two averagings (a positive int).
        enabled: False turns the whole thing off (training is then plain data parallel).
    """

    def __init__(self, accelerator: Any, model: torch.nn.Module, local_sgd_steps: int, enabled: bool = True) -> None:
        if isinstance(local_sgd_steps, bool) or not isinstance(local_sgd_steps, int) or local_sgd_steps < 1:
            raise ValueError(f"LocalSGD(local_sgd_steps={local_sgd_steps!r}): expected a positive int (optimizer steps "
                             "between two averagings of the parameters).")
        accelerator.strategy.refuse_unsupported("parameter_averaging", "LocalSGD",
                                                "Drop LocalSGD or use the DDP strategy.")
        self.accelerator = accelerator
        self.model = model
        self.local_sgd_steps = local_sgd_steps
        self.enabled = enabled and accelerator.num_processes > 1
        self.num_steps = 0
        self._no_sync: contextlib.ExitStack | None = None

    def __enter__(self) -> LocalSGD:
        if self.enabled:
            self._no_sync = contextlib.ExitStack()
            self._no_sync.enter_context(self.accelerator.no_sync(self.model))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled and self._no_sync is not None:
            self._average()
            self._no_sync.close()
            self._no_sync = None

    def step(self) -> None:
        """Count one optimizer step; every ``local_sgd_steps``-th averages the parameters."""
        self.num_steps += 1
        if self.enabled and self.num_steps % self.local_sgd_steps == 0:
            self._average()

    def _average(self) -> None:
        self.accelerator.wait_for_everyone()
        with torch.no_grad():
            for param in self.model.parameters():
                param.data = self.accelerator.reduce(param.data, reduction="mean")


__all__ = ["LocalSGD"]
