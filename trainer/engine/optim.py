"""Reading what ``configure_optimizers`` returned, and stepping learning-rate schedulers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from trainer.callbacks.base import MissingMetricError

_SHAPES = ("an optimizer; a list of optimizers; (optimizer, scheduler); ([optimizers], [schedulers]); "
           "{'optimizer': opt, 'lr_scheduler': scheduler or {'scheduler': s, 'interval': 'step'|'epoch', "
           "'frequency': n, 'monitor': 'val/loss'}}; or a list of such dicts")


@dataclass(slots=True)
class SchedulerConfig:
    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None  # LearningRateMonitor's key for this scheduler's optimizer

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


def _scheduler_config(item: Any, returned: Any, automatic: bool = True) -> SchedulerConfig:
    if isinstance(item, Mapping):
        unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "strict", "name"}
        if "scheduler" not in item or unknown:
            raise _bad(returned, f"the lr_scheduler dict needs a 'scheduler' key and accepts only "
                                 f"scheduler/interval/frequency/monitor/strict/name (got {sorted(item)})")
        config = SchedulerConfig(item["scheduler"], item.get("interval", "epoch"), item.get("frequency", 1),
                                 item.get("monitor"), item.get("strict", True), item.get("name"))
    else:
        config = SchedulerConfig(item)
    if not hasattr(config.scheduler, "step") or isinstance(config.scheduler, torch.optim.Optimizer):
        raise _bad(returned, f"{type(config.scheduler).__name__} is not a learning-rate scheduler")
    if not all(callable(getattr(config.scheduler, m, None)) for m in ("state_dict", "load_state_dict")):
        # checked now, as Lightning does: the first checkpoint (or a resume) would fail mid-training
        name = type(config.scheduler).__name__
        raise TypeError(f"configure_optimizers() returned the scheduler {name}, which has no state_dict() and "
                        f"load_state_dict(): checkpoints and resuming keep every scheduler's state. Define both on "
                        f"{name} (torch's and timm's schedulers have them).")
    if config.interval not in ("step", "epoch"):
        raise _bad(returned, f"lr_scheduler interval={config.interval!r} must be 'step' or 'epoch'")
    if not isinstance(config.frequency, int) or config.frequency < 1:
        raise _bad(returned, f"lr_scheduler frequency={config.frequency!r} must be a positive int")
    # manual optimization: the module steps its schedulers itself, with the metric it chooses (as in Lightning)
    if config.is_plateau and not config.monitor and automatic:
        raise _bad(returned, "ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': "
                             "{'scheduler': plateau, 'monitor': 'val/loss'}}")
    return config


def parse_optimizers(returned: Any, automatic: bool = True) -> tuple[list[torch.optim.Optimizer], list[SchedulerConfig]]:
    """Normalise ``configure_optimizers()``'s return value to (optimizers, scheduler configs).

    Lightning's shapes: an optimizer; a list/tuple of optimizers; ``([optimizers], [schedulers])``;
    a dict ``{"optimizer", "lr_scheduler", "monitor"}``; a list/tuple of such dicts; and the
    shorthand ``(optimizer, scheduler)``.
    """
    optimizers: list[Any]
    schedulers: list[Any] = []
    if isinstance(returned, torch.optim.Optimizer):
        optimizers = [returned]
    elif isinstance(returned, Mapping):
        optimizers, schedulers = _from_dict(returned, returned)
    elif isinstance(returned, (list, tuple)) and returned and all(isinstance(o, Mapping) for o in returned):
        optimizers = []
        for entry in returned:
            opts, scheds = _from_dict(entry, returned)
            optimizers += opts
            schedulers += scheds
    elif isinstance(returned, (list, tuple)) and len(returned) == 2 and isinstance(returned[1], (list, tuple)) \
            and isinstance(returned[0], (list, tuple)):
        optimizers, schedulers = list(returned[0]), list(returned[1])
    elif isinstance(returned, (list, tuple)) and returned \
            and all(isinstance(o, torch.optim.Optimizer) for o in returned):
        optimizers = list(returned)
    elif isinstance(returned, (list, tuple)) and len(returned) == 2:
        optimizers, schedulers = [returned[0]], [returned[1]]
    elif returned is None:
        raise _bad(returned, "nothing was returned (did you forget `return`?)")
    else:
        raise _bad(returned, f"a {type(returned).__name__} is not one of the accepted shapes")
    if not optimizers:
        raise _bad(returned, "no optimizer was returned")
    for optimizer in optimizers:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise _bad(returned, f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
    if len({id(o) for o in optimizers}) != len(optimizers):
        raise _bad(returned, "the same optimizer was returned twice")
    return optimizers, [_scheduler_config(s, returned, automatic) for s in schedulers]


def _from_dict(entry: Mapping, returned: Any) -> tuple[list[Any], list[Any]]:
    unknown = set(entry) - {"optimizer", "lr_scheduler", "monitor"}
    if "optimizer" not in entry:
        raise _bad(returned, "the dict has no 'optimizer' key")
    if unknown:
        raise _bad(returned, f"the dict accepts only optimizer/lr_scheduler/monitor keys (got {sorted(entry)})")
    scheduler = entry.get("lr_scheduler")
    if scheduler is None:
        return [entry["optimizer"]], []
    if entry.get("monitor") is not None:  # Lightning's top-level monitor, for a plain ReduceLROnPlateau
        scheduler = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
        scheduler.setdefault("monitor", entry["monitor"])
    return [entry["optimizer"]], [scheduler]


def check_optimizer_count(optimizers: list[torch.optim.Optimizer], module: Any) -> None:
    """Automatic optimization steps one optimizer; several need manual optimization (as in Lightning 2)."""
    if len(optimizers) > 1:
        names = ", ".join(type(o).__name__ for o in optimizers)
        raise ValueError(
            f"{type(module).__name__}.configure_optimizers() returned {len(optimizers)} optimizers ({names}), but "
            "automatic optimization steps exactly one. To step several (a GAN, alternating updates), use manual "
            "optimization: set `self.automatic_optimization = False` in __init__ and, in training_step, "
            "`opt_a, opt_b = self.optimizers()` then `self.manual_backward(loss)` and `opt_a.step()`. Or combine "
            "them into one optimizer with several parameter groups.")


def step_schedulers(configs: list[SchedulerConfig], interval: str, count: int,
                    metrics: Mapping[str, float], step: Callable[[Any, Any], None] | None = None) -> None:
    """Step each scheduler of this ``interval`` whose frequency divides ``count``
    (optimizer steps for "step", epochs for "epoch"). ``step(scheduler, metric)``: the module's own
    ``lr_scheduler_step`` when it overrides it, in place of ``scheduler.step()``."""
    for config in configs:
        if config.interval != interval or count % config.frequency:
            continue
        if not config.is_plateau:
            if step is None:
                config.scheduler.step()
            else:
                step(config.scheduler, None)
            continue
        if config.monitor is not None and config.monitor in metrics:
            if step is None:
                config.scheduler.step(metrics[config.monitor])
            else:
                step(config.scheduler, metrics[config.monitor])
        elif config.strict:
            raise MissingMetricError(f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged. Logged metrics: "
                           f"{sorted(metrics) or 'none'}. Log it with self.log({config.monitor!r}, value), "
                           "or set 'strict': False in the lr_scheduler dict to skip the step when it is missing.")
