"""``LearningRateMonitor``: logs each parameter group's learning rate."""

from __future__ import annotations

from typing import Any

from .base import Callback
from .view import TrainerView


class LearningRateMonitor(Callback):
    """Log the learning rate of every parameter group of every optimizer to the loggers.

    Names are Lightning's: ``lr-<Optimizer>``, or the ``"name"`` of the lr_scheduler config that
    schedules the optimizer; with several parameter groups ``<name>/pg<i>`` (or ``<name>/<group's
    "name">``); momentum as ``<name>-momentum``, weight decay as ``<name>-weight_decay``.

    Args:
        logging_interval: "step" (every ``log_every_n_steps`` optimizer steps), "epoch"
            (at each epoch start), or None (both).
        log_momentum: also log momentum (or Adam's beta1) as ``<name>-momentum``.
        log_weight_decay: also log each group's ``weight_decay`` as ``<name>-weight_decay``.
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(f"LearningRateMonitor(logging_interval={logging_interval!r}): expected 'step', "
                             "'epoch' or None.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self._last_logged_step = -1

    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            raise ValueError("LearningRateMonitor needs a logger to write to, but the Trainer has logger=False. "
                             "Remove logger=False (or pass e.g. logger=CSVLogger('runs')), or drop the callback.")

    def _values(self, trainer: TrainerView) -> dict[str, float]:
        # an lr_scheduler config's "name" names its optimizer's values, as in Lightning
        named = {id(config.scheduler.optimizer): config.name for config in trainer.lr_scheduler_configs
                 if getattr(config, "name", None) and hasattr(config.scheduler, "optimizer")}
        out = {}
        seen: dict[str, int] = {}
        for opt in trainer.optimizers:
            base = named.get(id(opt))
            if base is None:
                base = f"lr-{type(opt).__name__}"
                seen[base] = seen.get(base, -1) + 1
                if seen[base]:  # several optimizers of one class: lr-Adam, lr-Adam-1, ...
                    base = f"{base}-{seen[base]}"
            groups = opt.param_groups
            for i, group in enumerate(groups):
                group_name = group.get("name") or (f"pg{i + 1}" if len(groups) > 1 else None)
                name = f"{base}/{group_name}" if group_name else base
                out[name] = float(group["lr"])
                if self.log_momentum:
                    momentum = group.get("momentum", group.get("betas", (None,))[0])
                    if momentum is not None:
                        out[f"{name}-momentum"] = float(momentum)
                if self.log_weight_decay and group.get("weight_decay") is not None:
                    out[f"{name}-weight_decay"] = float(group["weight_decay"])
        return out

    def _log(self, trainer: TrainerView) -> None:
        self._last_logged_step = trainer.global_step  # an epoch start and a step at one step give one row
        values = self._values(trainer)
        for name, value in values.items():
            if not name.endswith(("-momentum", "-weight_decay")):  # lrs holds learning rates only, as Lightning's
                self.lrs.setdefault(name, []).append(value)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.enqueue_metrics(values, trainer.global_step)  # on the logger's writer thread

    def on_train_batch_start(self, trainer: TrainerView, module: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.logging_interval != "epoch" and step % trainer.log_every_n_steps == 0 \
                and step != self._last_logged_step:
            self._log(trainer)

    def on_train_epoch_start(self, trainer: TrainerView, module: Any) -> None:
        if self.logging_interval != "step":
            self._log(trainer)
