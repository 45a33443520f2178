"""Monitors: throughput (and model FLOP/s, MFU), device memory, and a timer that can end fit.

Each reads its clocks and counters on the host and writes to the loggers on rank zero at the
Trainer's log interval (``log_every_n_steps``), so no step waits on the device for them.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from typing import Any

from .base import Callback
from trainer.strategies.support import rank_zero_info
from .view import TrainerView

# Dense peak FLOP/s per device (vendor datasheets), by the precision the matmuls run in.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """The table's peak for a device name such as "NVIDIA A100-SXM4-80GB", or None if unknown."""
    import torch

    from trainer.strategies.precision import PRECISION_TABLE

    _, autocast_dtype, param_dtype = PRECISION_TABLE.get(precision, (None, None, None))
    kinds: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    kind = kinds.get(autocast_dtype or param_dtype, "fp32")
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):  # "L40S" before "L4"
        if key in device_name:
            return PEAK_FLOPS[key].get(kind)
    return None


def _log(trainer: TrainerView, values: dict[str, float]) -> None:
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.enqueue_metrics(values, trainer.global_step)  # on the logger's writer thread


class ThroughputMonitor(Callback):
    """Log training throughput every ``log_every_n_steps`` optimizer steps: samples/s, batches/s,
    items/s (from the ``num_items`` a ``training_step`` returns), and with a FLOP count, model FLOP/s
    and MFU (model FLOP/s over the device's peak, for the devices in ``PEAK_FLOPS``).

    Rates are for the whole job (this process's rate times the number of processes, which all run
    the same number of steps). The FLOP count comes from ``flops_per_sample`` (forward + backward,
    e.g. ~6 x parameters for a transformer per token) or, with ``measure_flops=True``, from torch's
    FLOP counter over the first training batch (its matmuls and convolutions, forward and backward).

    Args:
        flops_per_sample: model FLOPs of one training sample (forward + backward).
        measure_flops: count them on the first batch instead.
    """

    def __init__(self, flops_per_sample: float | None = None, measure_flops: bool = False) -> None:
        if flops_per_sample is not None and not (isinstance(flops_per_sample, (int, float)) and flops_per_sample > 0):
            raise ValueError(f"ThroughputMonitor(flops_per_sample={flops_per_sample!r}): expected a positive number of "
                             "FLOPs per sample (forward + backward), or None; or pass measure_flops=True.")
        self.flops_per_sample = flops_per_sample
        self.measure_flops = measure_flops
        self.last: dict[str, float] = {}
        self._counter: Any = None
        self._items: Any = 0
        self._mark: tuple[float, int, int, Any] | None = None
        self._peak: float | None = None

    def on_train_start(self, trainer: TrainerView, module: Any) -> None:
        self._items = 0
        self._mark = (time.perf_counter(), trainer.state.batches_seen, trainer.state.samples_seen, 0)
        device = trainer.strategy.root_device
        if device.type == "cuda":
            import torch

            self._peak = peak_flops(torch.cuda.get_device_name(device), trainer.precision)
        else:
            self._peak = None  # MFU needs a known accelerator's peak; none for CPU

    def on_train_batch_start(self, trainer: TrainerView, module: Any, batch: Any, batch_idx: int) -> None:
        if self.measure_flops and self.flops_per_sample is None and self._counter is None:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()  # counts this batch's forward and backward
            self._samples_before = trainer.state.samples_seen

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            size = max(trainer.state.samples_seen - self._samples_before, 1)
            self.flops_per_sample = self._counter.get_total_flops() / size
            self._counter = None
        if isinstance(outputs, dict) and outputs.get("num_items") is not None:
            self._items = self._items + outputs["num_items"]  # stays on the device until the log interval
        step = trainer.global_step
        if step and step % trainer.log_every_n_steps == 0 and self._mark is not None and step != self._mark[3]:
            self._report(trainer)

    def _report(self, trainer: TrainerView) -> None:
        now, batches, samples = time.perf_counter(), trainer.state.batches_seen, trainer.state.samples_seen
        then, batches0, samples0, _ = self._mark  # type: ignore[misc]
        seconds = max(now - then, 1e-9)
        world = trainer.world_size
        values = {"throughput/batches_per_sec": world * (batches - batches0) / seconds,
                  "throughput/samples_per_sec": world * (samples - samples0) / seconds}
        items = self._items
        if not isinstance(items, int) or items:
            values["throughput/items_per_sec"] = world * float(items) / seconds
        if self.flops_per_sample is not None:
            flops = values["throughput/samples_per_sec"] * self.flops_per_sample
            values["throughput/flops_per_sec"] = flops
            if self._peak is not None:
                values["throughput/mfu"] = flops / (self._peak * world)
        self.last = values
        self._items = 0
        self._mark = (now, batches, samples, trainer.global_step)
        _log(trainer, values)


class DeviceStatsMonitor(Callback):
    """Log memory every ``log_every_n_steps`` optimizer steps: this process's resident set (RSS) and
    peak RSS in MB, and with CUDA the allocated, reserved and peak-allocated memory of its device."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step and step % trainer.log_every_n_steps == 0 and self.last.get("_step") != step:
            values = self.stats(trainer.strategy.root_device)
            self.last = {**values, "_step": step}
            _log(trainer, values)

    @staticmethod
    def stats(device: Any) -> dict[str, float]:
        import resource

        mb = 1024 * 1024
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        values = {"device_stats/cpu_rss_mb": rss / mb,
                  "device_stats/cpu_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if getattr(device, "type", None) == "cuda":
            import torch

            values.update({"device_stats/cuda_allocated_mb": torch.cuda.memory_allocated(device) / mb,
                           "device_stats/cuda_reserved_mb": torch.cuda.memory_reserved(device) / mb,
                           "device_stats/cuda_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / mb})
        return values


def _parse_duration(duration: Any) -> datetime.timedelta | None:
    if duration is None or isinstance(duration, datetime.timedelta):
        return duration
    if isinstance(duration, dict):
        try:
            return datetime.timedelta(**duration)
        except TypeError as err:
            raise ValueError(f"Timer(duration={duration!r}): {err}; expected keys of datetime.timedelta "
                             "(days, hours, minutes, seconds).") from None
    if isinstance(duration, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", duration.strip()):
        days, hours, minutes, seconds = (int(p) for p in duration.strip().split(":"))
        return datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise ValueError(f"Timer(duration={duration!r}): expected a 'DD:HH:MM:SS' string such as '00:12:00:00' (12 "
                     "hours), a datetime.timedelta, or a dict such as {'hours': 12}.")


class Timer(Callback):
    """Measure the time of each stage and, with ``duration``, stop fit once training has run that long.

    The check runs after every optimizer step (``interval="step"``) or epoch (``"epoch"``); with several
    processes rank zero decides at log intervals and every rank follows, so they stop together. The
    elapsed time is checkpointed: a resumed run continues the clock.

    Args:
        duration: "DD:HH:MM:SS", a ``datetime.timedelta``, a dict of timedelta fields, or None.
        interval: "step" or "epoch".

    Example:
        >>> Timer(duration="00:12:00:00")      # stop after 12 hours of training  # doctest: +SKIP
    """

    STAGES = ("train", "validate", "test", "predict")

    def __init__(self, duration: Any = None, interval: str = "step") -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"Timer(interval={interval!r}): expected 'step' or 'epoch'.")
        self.duration = _parse_duration(duration)
        self.interval = interval
        self._offset = {stage: 0.0 for stage in self.STAGES}  # time from before a resume
        self._start: dict[str, float | None] = {stage: None for stage in self.STAGES}
        self._end: dict[str, float | None] = {stage: None for stage in self.STAGES}
        self._checked_step = -1

    def start_time(self, stage: str = "train") -> float | None:
        return self._start[stage]

    def end_time(self, stage: str = "train") -> float | None:
        return self._end[stage]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` so far (including before a resume)."""
        start, end = self._start[stage], self._end[stage]
        running = 0.0 if start is None else (end if end is not None else time.monotonic()) - start
        return self._offset[stage] + running

    def time_remaining(self, stage: str = "train") -> float | None:
        return None if self.duration is None else self.duration.total_seconds() - self.time_elapsed(stage)

    def _begin(self, stage: str) -> None:
        if self._start[stage] is not None and self._end[stage] is not None:
            self._offset[stage] += self._end[stage] - self._start[stage]  # type: ignore[operator]
        self._start[stage], self._end[stage] = time.monotonic(), None

    def _finish(self, stage: str) -> None:
        self._end[stage] = time.monotonic()

    def on_train_start(self, trainer: TrainerView, module: Any) -> None:
        self._begin("train")

    def on_train_end(self, trainer: TrainerView, module: Any) -> None:
        self._finish("train")

    def on_validation_start(self, trainer: TrainerView, module: Any) -> None:
        self._begin("validate")

    def on_validation_end(self, trainer: TrainerView, module: Any) -> None:
        self._finish("validate")

    def on_test_start(self, trainer: TrainerView, module: Any) -> None:
        self._begin("test")

    def on_test_end(self, trainer: TrainerView, module: Any) -> None:
        self._finish("test")

    def on_predict_start(self, trainer: TrainerView, module: Any) -> None:
        self._begin("predict")

    def on_predict_end(self, trainer: TrainerView, module: Any) -> None:
        self._finish("predict")

    def _check(self, trainer: TrainerView) -> None:
        if self.duration is None:
            return
        up = self.time_elapsed("train") >= self.duration.total_seconds()
        if trainer.world_size > 1:  # one decision, rank zero's, so every rank stops at the same step
            up = bool(trainer.strategy.broadcast(up))
        if up and not trainer.should_stop:
            trainer.should_stop = True
            if trainer.is_global_zero:
                rank_zero_info(f"Timer: {self.duration} of training reached; stopping.")

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.interval != "step" or step == self._checked_step:
            return  # inside an accumulation window: no new optimizer step yet
        if trainer.world_size > 1 and step % trainer.log_every_n_steps:
            return
        self._checked_step = step
        self._check(trainer)

    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        if self.interval == "epoch":
            self._check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in self.STAGES}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._offset = {stage: float(state["time_elapsed"].get(stage, 0.0)) for stage in self.STAGES}
        self._start = {stage: None for stage in self.STAGES}
        self._end = {stage: None for stage in self.STAGES}
