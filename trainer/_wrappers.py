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
            self._accelerator.strategy.zero_grad(self.optimizer, set_to_none=set_to_none)

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
    (one batch of look-ahead), so ``accumulate()`` can close the final, short window.

    With several processes the loader carries a ``DistributedSampler`` (see
    ``Accelerator.prepare_data_loader``); the sampler's epoch advances on every pass unless the
    user calls ``set_epoch`` themselves, and the wrapper counts this rank's samples so
    ``gather_for_metrics`` can put gathered samples back in sampler order and drop the padding.
    """

    def __init__(self, loader: Any, accelerator: Any, skipped_samples: int = 0, auto_epoch: bool = True) -> None:
        self.loader = loader
        self._accelerator = accelerator
        self.is_last = False
        self.remaining: int | None = None  # batches left after the current one, when known
        self.samples_before = 0  # this rank's samples yielded before the current batch, this pass
        self.batch_len = 0  # samples in the current batch
        self._skipped_samples = skipped_samples
        self._auto_epoch = auto_epoch
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def padded_sampler(self) -> Any:
        """The ``DistributedSampler`` that pads this loader's last samples, or None."""
        todo = [getattr(self.loader, "batch_sampler", None), getattr(self.loader, "sampler", None)]
        for _ in range(8):  # through BatchSampler and skip_first_batches' wrapper
            if not todo:
                break
            obj = todo.pop()
            if obj is None:
                continue
            if isinstance(obj, torch.utils.data.DistributedSampler):
                return None if obj.drop_last else obj
            todo.append(getattr(obj, "sampler", None))
        return None

    def __iter__(self) -> Iterator[Any]:
        accelerator = self._accelerator
        accelerator._active_loader = self
        accelerator._micro = 0
        if self._auto_epoch:
            self._set_sampler_epoch(self._epoch)
            self._epoch += 1
        try:
            total: int | None = len(self.loader)
        except TypeError:
            total = None
        self.samples_before = self._skipped_samples
        try:
            for index, (batch, is_last) in enumerate(with_is_last(self.loader)):
                self.is_last = is_last
                self.remaining = 0 if is_last else (max(total - index - 1, 1) if total is not None else None)
                self.batch_len = _batch_len(batch)
                yield accelerator.batch_to_device(batch)
                self.samples_before += self.batch_len
        finally:
            accelerator._active_loader = None

    def set_epoch(self, epoch: int) -> None:
        """Set the shuffling epoch yourself (the wrapper then stops advancing it on each pass)."""
        self._auto_epoch = False
        self._set_sampler_epoch(epoch)

    def _set_sampler_epoch(self, epoch: int) -> None:
        for obj in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def _batch_len(batch: Any) -> int:
    """How many samples a collated batch holds (the first dimension of its first tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = _batch_len(item)
            if n:
                return n
    return 0


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
