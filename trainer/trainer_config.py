"""``TrainerConfig``: the Trainer's settings, validated before anything runs."""

from __future__ import annotations

import datetime
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

from trainer.strategies.support import quoted
from trainer.strategies.exceptions import MisconfigurationException


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_max_time(value: Any) -> float | None:
    """Seconds from a number, a ``timedelta``, a dict of timedelta kwargs, or "DD:HH:MM:SS"."""
    if value is None:
        return None
    fix = ("Pass seconds (e.g. 3600), a datetime.timedelta, a dict such as {'hours': 1}, "
           "or a string 'DD:HH:MM:SS' such as '00:01:00:00'.")
    try:
        if isinstance(value, datetime.timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, dict):
            seconds = datetime.timedelta(**value).total_seconds()
        elif isinstance(value, str):
            days, hours, minutes, secs = (int(p) for p in value.split(":"))
            seconds = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise MisconfigurationException(f"Trainer(max_time={value!r}): cannot read this as a duration. {fix}") from None
    if seconds <= 0:
        raise MisconfigurationException(f"Trainer(max_time={value!r}): the duration must be positive. {fix}")
    return seconds


def _check_limit(name: str, value: Any) -> None:
    if value is None:
        return
    if _is_int(value):
        if value < 0:
            raise MisconfigurationException(f"Trainer({name}={value}): expected a number of batches >= 0, "
                             "or a fraction of the epoch in [0.0, 1.0].")
        return
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            fix = f" For a number of batches pass an int, e.g. {name}={int(value)}." if value > 1 else ""
            raise MisconfigurationException(f"Trainer({name}={value}): a float is a fraction of the epoch and must lie in "
                             f"[0.0, 1.0].{fix}")
        return
    raise TypeError(f"Trainer({name}={value!r}): expected an int (batches) or a float (fraction of the epoch).")


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_int(value) or value < 1:
        raise MisconfigurationException(f"Trainer({name}={value!r}): expected a positive int.")


@dataclass(slots=True, kw_only=True)
class TrainerConfig:
    """Every loop setting of a ``Trainer``, as the user gave it, checked in ``__post_init__``."""

    max_epochs: int | None = None
    max_steps: int = -1
    max_time: Any = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    limit_predict_batches: int | float | None = None
    num_sanity_val_steps: int = 2
    fast_dev_run: bool | int = False
    log_every_n_steps: int = 50
    default_root_dir: str = "runs"
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    deterministic: bool | str = False
    stop_on_nonfinite_loss: bool = True
    # Lightning's everyday switches (see _check_lightning_switches)
    min_epochs: int | None = None
    min_steps: int | None = None
    overfit_batches: int | float = 0.0
    reload_dataloaders_every_n_epochs: int = 0
    use_distributed_sampler: bool = True
    benchmark: bool | None = None
    detect_anomaly: bool = False
    inference_mode: bool = True
    sync_batchnorm: bool = False
    barebones: bool = False
    oom_split: bool = False
    enable_model_summary: bool = True

    def __post_init__(self) -> None:
        if self.max_epochs is not None and (not _is_int(self.max_epochs) or self.max_epochs < -1 or self.max_epochs == 0):
            raise MisconfigurationException(f"Trainer(max_epochs={self.max_epochs!r}): expected a positive int, -1 for no limit, "
                             "or None (1000 epochs unless max_steps or max_time stop first). "
                             "To only evaluate, call trainer.validate(...) instead of fit.")
        if not _is_int(self.max_steps) or self.max_steps < -1 or self.max_steps == 0:
            raise MisconfigurationException(f"Trainer(max_steps={self.max_steps!r}): expected a positive number of optimizer steps, "
                             "or -1 for no limit. max_steps=0 would train nothing; to only evaluate, call "
                             "trainer.validate(...).")
        self.max_time = parse_max_time(self.max_time)
        if self.max_epochs == -1 and self.max_steps == -1 and self.max_time is None:
            raise MisconfigurationException("Trainer(max_epochs=-1, max_steps=-1): no limit at all would train forever. "
                             "Set max_epochs, max_steps or max_time.")
        _check_positive_int("accumulate_grad_batches", self.accumulate_grad_batches)
        _check_positive_int("log_every_n_steps", self.log_every_n_steps)
        _check_positive_int("check_val_every_n_epoch", self.check_val_every_n_epoch, allow_none=True)
        self._check_clipping()
        self._check_val_interval()
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
            _check_limit(name, getattr(self, name))
        if self.limit_train_batches == 0:
            raise MisconfigurationException("Trainer(limit_train_batches=0): fit would train on no batch. "
                             "Remove the limit, or call trainer.validate(...) to only evaluate.")
        if not _is_int(self.num_sanity_val_steps) or self.num_sanity_val_steps < -1:
            raise MisconfigurationException(f"Trainer(num_sanity_val_steps={self.num_sanity_val_steps!r}): expected an int >= 0, "
                             "or -1 to run the whole validation set before training.")
        if not (isinstance(self.fast_dev_run, bool) or (_is_int(self.fast_dev_run) and self.fast_dev_run >= 0)):
            raise MisconfigurationException(f"Trainer(fast_dev_run={self.fast_dev_run!r}): expected True/False or a number of "
                             "batches >= 0.")
        if self.deterministic not in (True, False, "warn"):
            raise MisconfigurationException(f"Trainer(deterministic={self.deterministic!r}): expected True, False or 'warn'.")
        self._check_lightning_switches()
        if not isinstance(self.oom_split, bool):
            raise TypeError(f"Trainer(oom_split={self.oom_split!r}): expected True or False.")
        self._apply_fast_dev_run()
        self._apply_overfit_batches()

    def _check_clipping(self) -> None:
        if self.gradient_clip_algorithm not in ("norm", "value"):
            raise MisconfigurationException(f"Trainer(gradient_clip_algorithm={self.gradient_clip_algorithm!r}): expected "
                             f"{quoted(('norm', 'value'))}.")
        value = self.gradient_clip_val
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)
                                  or not math.isfinite(value) or value < 0):
            # nan compares False with everything: it passed a plain `< 0` and turned every gradient into NaN
            raise MisconfigurationException(f"Trainer(gradient_clip_val={value!r}): expected a finite number >= 0, or None "
                                            "for no clipping (0 clips nothing either).")

    def _check_val_interval(self) -> None:
        v = self.val_check_interval
        if _is_int(v):
            if v < 1:
                raise MisconfigurationException(f"Trainer(val_check_interval={v}): an int counts training batches and must be >= 1.")
        elif isinstance(v, float):
            if not 0.0 < v <= 1.0:
                raise MisconfigurationException(f"Trainer(val_check_interval={v}): a float is a fraction of the epoch in (0.0, 1.0]; "
                                 "pass an int to validate every N training batches.")
        else:
            raise TypeError(f"Trainer(val_check_interval={v!r}): expected a float in (0, 1] or an int >= 1.")
        if self.check_val_every_n_epoch is None and not _is_int(v):
            raise MisconfigurationException("Trainer(check_val_every_n_epoch=None) counts val_check_interval over all epochs, "
                             f"so val_check_interval must be an int number of batches, got {v!r}.")

    def _check_lightning_switches(self) -> None:
        for name in ("min_epochs", "min_steps"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise MisconfigurationException(f"Trainer({name}={value!r}): expected an int >= 0 or None.")
        if self.min_epochs is not None and self.max_epochs not in (None, -1) and self.min_epochs > self.max_epochs:
            raise MisconfigurationException(f"Trainer(min_epochs={self.min_epochs}, max_epochs={self.max_epochs}): min_epochs cannot "
                             "exceed max_epochs.")
        if self.min_steps is not None and self.max_steps != -1 and self.min_steps > self.max_steps:
            raise MisconfigurationException(f"Trainer(min_steps={self.min_steps}, max_steps={self.max_steps}): min_steps cannot "
                             "exceed max_steps.")
        if not _is_int(self.reload_dataloaders_every_n_epochs) or self.reload_dataloaders_every_n_epochs < 0:
            raise MisconfigurationException(f"Trainer(reload_dataloaders_every_n_epochs={self.reload_dataloaders_every_n_epochs!r}): "
                             "expected an int >= 0 (0: never reload).")
        _check_limit("overfit_batches", self.overfit_batches)
        for name in ("use_distributed_sampler", "detect_anomaly", "inference_mode", "sync_batchnorm", "barebones",
                     "enable_model_summary"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Trainer({name}={getattr(self, name)!r}): expected True or False.")
        if self.benchmark not in (None, True, False):
            raise TypeError(f"Trainer(benchmark={self.benchmark!r}): expected True, False or None.")
        if self.barebones:
            self._apply_barebones()

    def _apply_barebones(self) -> None:
        """Lightning's ``barebones=True``: nothing runs beside the loop (no checkpointing, progress
        bar, sanity check; the Trainer also drops loggers). The Trainer refuses an explicit request
        for one of them (see wiring._check_barebones)."""
        self.enable_checkpointing = self.enable_progress_bar = self.enable_model_summary = False
        self.num_sanity_val_steps = 0

    def _apply_overfit_batches(self) -> None:
        """Lightning's ``overfit_batches``: the same first N (or fraction of) batches every epoch, for
        training and validation; the training loader is read in order (see Trainer._distribute)."""
        if self.overfit_batches == 0:
            return
        self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        self.num_sanity_val_steps = 0

    def _apply_fast_dev_run(self) -> None:
        if self.fast_dev_run is False or self.fast_dev_run == 0:
            return
        n = 1 if self.fast_dev_run is True else int(self.fast_dev_run)
        self.max_epochs, self.max_steps, self.max_time = 1, n, None
        self.limit_train_batches = self.limit_val_batches = n
        self.limit_test_batches = self.limit_predict_batches = n
        self.num_sanity_val_steps = 0
        self.val_check_interval = 1.0
        self.check_val_every_n_epoch = 1
        self.log_every_n_steps = 1

    @property
    def epochs_limit(self) -> float:
        """How many epochs fit may run: max_epochs, or 1000 when nothing else bounds it."""
        if self.max_epochs is None:
            return float("inf") if (self.max_steps != -1 or self.max_time is not None) else 1000
        return float("inf") if self.max_epochs == -1 else self.max_epochs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
