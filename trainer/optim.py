"""Reading what ``configure_optimizers`` returned, and stepping learning-rate schedulers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from trainer.callbacks.base import MissingMetricError

_SHAPES = ("an optimizer; (optimizer, scheduler); ([optimizer], [scheduler, ...]); "
           "{'optimizer': opt, 'lr_scheduler': scheduler or {'scheduler': s, 'interval': 'step'|'epoch', "
           "'frequency': n, 'monitor': 'val/loss'}}")


@dataclass(slots=True)
class SchedulerConfig:
    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True

    @property
    def is_plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _bad(returned: Any, why: str) -> TypeError:
    return TypeError(f"configure_optimizers() returned {_describe(returned):.200}: {why}. Expected {_SHAPES}.")


def _describe(value: Any) -> str:
    """A one-line picture of a returned value: optimizers and schedulers by class name (their
    reprs span many lines), containers by their items."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_describe(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return type(value).__name__


def _scheduler_config(item: Any, returned: Any) -> SchedulerConfig:
    if isinstance(item, Mapping):
        unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "strict", "name"}
        if "scheduler" not in item or unknown:
            raise _bad(returned, f"the lr_scheduler dict needs a 'scheduler' key and accepts only "
                                 f"scheduler/interval/frequency/monitor/strict/name (got {sorted(item)})")
        config = SchedulerConfig(item["scheduler"], item.get("interval", "epoch"), item.get("frequency", 1),
                                 item.get("monitor"), item.get("strict", True))
    else:
        config = SchedulerConfig(item)
    if not hasattr(config.scheduler, "step") or isinstance(config.scheduler, torch.optim.Optimizer):
        raise _bad(returned, f"{type(config.scheduler).__name__} is not a learning-rate scheduler")
    if config.interval not in ("step", "epoch"):
        raise _bad(returned, f"lr_scheduler interval={config.interval!r} must be 'step' or 'epoch'")
    if not isinstance(config.frequency, int) or config.frequency < 1:
        raise _bad(returned, f"lr_scheduler frequency={config.frequency!r} must be a positive int")
    if config.is_plateau and not config.monitor:
        raise _bad(returned, "ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': "
                             "{'scheduler': plateau, 'monitor': 'val/loss'}}")
    return config


def parse_optimizers(returned: Any) -> tuple[torch.optim.Optimizer, list[SchedulerConfig]]:
    """Normalise ``configure_optimizers()``'s return value to (optimizer, scheduler configs)."""
    optimizer: Any
    schedulers: list[Any] = []
    if isinstance(returned, torch.optim.Optimizer):
        optimizer = returned
    elif isinstance(returned, (list, tuple)) and len(returned) > 1 \
            and all(isinstance(o, torch.optim.Optimizer) for o in returned):
        raise _bad(returned, f"{len(returned)} optimizers were returned; the Trainer steps exactly one "
                             "(combine parameter groups into one optimizer)")
    elif isinstance(returned, Mapping):
        if "optimizer" not in returned:
            raise _bad(returned, "the dict has no 'optimizer' key")
        optimizer = returned["optimizer"]
        if returned.get("lr_scheduler") is not None:
            schedulers = [returned["lr_scheduler"]]
    elif isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[1], (list, tuple)) \
            and isinstance(returned[0], (list, tuple)):
        optimizers, schedulers = list(returned[0]), list(returned[1])
        if len(optimizers) != 1:
            raise _bad(returned, f"{len(optimizers)} optimizers were returned; the Trainer steps exactly one "
                                 "(combine parameter groups into one optimizer)")
        optimizer = optimizers[0]
    elif isinstance(returned, (list, tuple)) and len(returned) == 2:
        optimizer, schedulers = returned[0], [returned[1]]
    elif isinstance(returned, (list, tuple)) and len(returned) == 1:
        optimizer = returned[0]
    elif returned is None:
        raise _bad(returned, "nothing was returned (did you forget `return`?)")
    else:
        raise _bad(returned, f"a {type(returned).__name__} is not one of the accepted shapes")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise _bad(returned, f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
    return optimizer, [_scheduler_config(s, returned) for s in schedulers]


def step_schedulers(configs: list[SchedulerConfig], interval: str, count: int,
                    metrics: Mapping[str, float]) -> None:
    """Step each scheduler of this ``interval`` whose frequency divides ``count``
    (optimizer steps for "step", epochs for "epoch")."""
    for config in configs:
        if config.interval != interval or count % config.frequency:
            continue
        if not config.is_plateau:
            config.scheduler.step()
            continue
        if config.monitor in metrics:
            config.scheduler.step(metrics[config.monitor])
        elif config.strict:
            raise MissingMetricError(f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged. Logged metrics: "
                           f"{sorted(metrics) or 'none'}. Log it with self.log({config.monitor!r}, value), "
                           "or set 'strict': False in the lr_scheduler dict to skip the step when it is missing.")
