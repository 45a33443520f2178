"""What ``Accelerator.prepare`` hands back: thin wrappers that follow the accumulation window."""

from __future__ import annotations

from typing import Any, Iterator

import torch


class AcceleratedOptimizer(torch.optim.Optimizer):
    """An optimizer whose ``step`` and ``zero_grad`` act only on the last micro-step of an
    accumulation window (``accelerator.sync_gradients``), with loss-scaling handled.

    Inside ``accelerator.accumulate()`` the non-final micro-steps only accumulate
    gradients; outside it every call steps. The wrapped optimizer is ``.optimizer``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accelerator: Any) -> None:
        # Deliberately no super().__init__: this object delegates its state to `optimizer`.
        self.optimizer = optimizer
        self._accelerator = accelerator

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if self._accelerator.sync_gradients:
            self._accelerator.strategy.optimizer_step(self.optimizer)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._accelerator.sync_gradients:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"


class AcceleratedScheduler:
    """A scheduler that steps once per optimizer step (not per micro-batch)."""

    def __init__(self, scheduler: Any, accelerator: Any) -> None:
        self.scheduler = scheduler
        self._accelerator = accelerator

    def step(self, *args: Any, **kwargs: Any) -> None:
        if not self._accelerator.step_scheduler_with_optimizer or self._accelerator.sync_gradients:
            self.scheduler.step(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)


class PreparedDataLoader:
    """Yields batches already on the accelerator's device, and tells it which batch is last
    (one batch of look-ahead), so ``accumulate()`` can close the final, short window."""

    def __init__(self, loader: torch.utils.data.DataLoader, accelerator: Any) -> None:
        self.loader = loader
        self._accelerator = accelerator
        self.is_last = False
        self.remaining: int | None = None  # batches left after the current one, when known

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        accelerator = self._accelerator
        accelerator._active_loader = self
        accelerator._micro = 0
        try:
            total: int | None = len(self.loader)
        except TypeError:
            total = None
        try:
            for index, (batch, is_last) in enumerate(with_is_last(self.loader)):
                self.is_last = is_last
                self.remaining = 0 if is_last else (max(total - index - 1, 1) if total is not None else None)
                yield accelerator.batch_to_device(batch)
        finally:
            accelerator._active_loader = None

    def set_epoch(self, epoch: int) -> None:
        for obj in (self.loader.sampler, getattr(self.loader, "batch_sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def with_is_last(iterable: Any) -> Iterator[tuple[Any, bool]]:
    """Yield ``(item, is_last)``, fetching one item ahead."""
    iterator = iter(iterable)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True
