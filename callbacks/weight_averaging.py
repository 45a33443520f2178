"""Weight averaging: ``WeightAveraging`` (an ``AveragedModel`` updated after optimizer steps or epochs) and its
exponential moving average, ``EMAWeightAveraging`` -- Lightning 2.6's callbacks, with its checkpoint layout.

The averaged weights replace the module's for validation (swapped in and out around each validation epoch)
and at the end of training. A checkpoint holds the averaged weights as ``state_dict`` (what a user loads) and
the weights being trained as ``current_model_state``; a resume trains on from the latter.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from trainer.strategies.support import rank_zero_warn

from .base import Callback
from .view import TrainerView


def refuse_sharded(callback: Callback, trainer: TrainerView) -> None:
    """A strategy that cannot keep a full averaged copy beside the module refuses, saying why."""
    trainer.strategy.refuse_unsupported("weight_averaging", type(callback).__name__,
                                        "Use strategy='ddp' or a single device for weight averaging.")


def detached_copy(module: torch.nn.Module, trainer: TrainerView) -> torch.nn.Module:
    """A deep copy of ``module`` that does not drag the running trainer (and its process group) along."""
    return copy.deepcopy(module, memo={id(trainer): None})


class WeightAveraging(Callback):
    """Keeps an ``torch.optim.swa_utils.AveragedModel`` of the module, updated when ``should_update`` says so
    (by default after every optimizer step). With no ``avg_fn``/``multi_avg_fn`` the average is equal-weighted.

    Example:
        >>> from torch.optim.swa_utils import get_ema_avg_fn
        >>> class EMAFrom100(WeightAveraging):
        ...     def __init__(self):
        ...         super().__init__(avg_fn=get_ema_avg_fn(0.99))
        ...     def should_update(self, step_idx=None, epoch_idx=None):
        ...         return step_idx is not None and step_idx >= 100

    Args:
        device: where the averaged copy lives (default: the module's device).
        use_buffers: average the buffers too (True, unlike ``AveragedModel``'s default, as in Lightning).
        **kwargs: passed to ``AveragedModel`` (``avg_fn``, ``multi_avg_fn``).
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True, **kwargs: Any) -> None:
        self._device = torch.device(device) if isinstance(device, str) else device
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: AveragedModel | None = None
        self._latest_update_step = 0
        self._latest_update_epoch = -1

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after the optimizer step ``step_idx`` (from 0) or the epoch ``epoch_idx``? Default: every step."""
        return step_idx is not None

    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded(self, trainer)
        device = self._device or next(module.parameters()).device
        self._average_model = AveragedModel(detached_copy(module, trainer), device=device,
                                            use_buffers=self._use_buffers, **self._kwargs)

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # every micro-batch ends here; the step count moves only when the window's optimizer step ran
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            assert self._average_model is not None  # made in setup
            self._average_model.update_parameters(module)
            self._latest_update_step = trainer.global_step

    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        if trainer.current_epoch > self._latest_update_epoch and self.should_update(epoch_idx=trainer.current_epoch):
            assert self._average_model is not None  # made in setup
            self._average_model.update_parameters(module)
            self._latest_update_epoch = trainer.current_epoch

    def on_train_end(self, trainer: TrainerView, module: Any) -> None:
        for average, current in self._pairs(module):
            current.data.copy_(average.data)

    def on_validation_epoch_start(self, trainer: TrainerView, module: Any) -> None:
        if self._average_model is not None:
            self._swap(module)

    def on_validation_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        if self._average_model is not None:
            self._swap(module)

    def on_save_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None or "state_dict" not in checkpoint:
            return
        average = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len("module."):]: v for k, v in average.items() if k.startswith("module.")}
        checkpoint["averaging_state"] = {k: v for k, v in average.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            state = {"module." + k: v for k, v in checkpoint["state_dict"].items()}
            self._average_model.load_state_dict({**state, **checkpoint["averaging_state"]})
            module.load_state_dict(checkpoint["current_model_state"])  # training continues from these
        else:
            rank_zero_warn(f"{type(self).__name__}: the checkpoint was not written with weight averaging; the averaged "
                           "copy starts from its weights.")
            self._average_model.module.load_state_dict(copy.deepcopy(checkpoint["state_dict"]), strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"latest_update_step": self._latest_update_step, "latest_update_epoch": self._latest_update_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]
        self._latest_update_epoch = state_dict.get("latest_update_epoch", -1)

    def _pairs(self, module: torch.nn.Module) -> Any:
        assert self._average_model is not None  # made in setup
        average = self._average_model.module
        return zip(itertools.chain(average.parameters(), average.buffers()),
                   itertools.chain(module.parameters(), module.buffers()))

    def _swap(self, module: torch.nn.Module) -> None:
        for average, current in self._pairs(module):
            kept = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(kept)


class EMAWeightAveraging(WeightAveraging):
    """An exponential moving average of the weights: ``avg = decay * avg + (1 - decay) * weights``, updated
    every ``update_every_n_steps`` optimizer steps from ``update_starting_at_step`` (and at each epoch's end
    from ``update_starting_at_epoch``, when given).

    Args:
        decay: the average's weight on its past.
        update_every_n_steps: update on steps whose index (from 0) is a multiple of it.
        update_starting_at_step, update_starting_at_epoch: the first step / epoch that updates.
        device, use_buffers, **kwargs: as for ``WeightAveraging``.
    """

    def __init__(self, device: torch.device | str | int | None = None, use_buffers: bool = True, decay: float = 0.999,
                 update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs: Any) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMAWeightAveraging(decay={decay!r}): expected a number in [0, 1], e.g. 0.999.")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=get_ema_avg_fn(decay=decay), **kwargs)
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            if started and self.update_every_n_steps > 0 and step_idx % self.update_every_n_steps == 0:
                return True
        return epoch_idx is not None and self.update_starting_at_epoch is not None \
            and epoch_idx >= self.update_starting_at_epoch

