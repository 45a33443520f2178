"""Metrics logged with ``self.log``: kept on the device, read back only when flushed.

Each ``log`` call appends a detached device scalar to a list (no kernel, no sync). A flush,
which the loop runs every ``log_every_n_steps`` optimizer steps and at epoch end, stacks
every pending value into one tensor and reads it back in a single transfer, then folds
it into host-side running sums (float64). Epoch values are weighted by batch size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trainer.strategies.support import quoted
from trainer.strategies.exceptions import MisconfigurationException

REDUCE_FX = ("mean", "sum", "max", "min")
_CALLABLE_NAMES = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
                   sum: "sum", max: "max", min: "min"}


def _reduce_name(name: str, reduce_fx: Any) -> str | Callable:
    if isinstance(reduce_fx, str):
        reduce_fx = {"avg": "mean"}.get(reduce_fx.lower(), reduce_fx.lower())  # Lightning's spellings ("SUM", "avg")
        if reduce_fx not in REDUCE_FX:
            raise ValueError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): expected one of {quoted(REDUCE_FX)} "
                             "or a callable that reduces a 1-D tensor to a scalar.")
        return reduce_fx
    if reduce_fx in _CALLABLE_NAMES:
        return _CALLABLE_NAMES[reduce_fx]
    if callable(reduce_fx):
        return reduce_fx
    raise TypeError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): expected one of {quoted(REDUCE_FX)} or a callable.")


class UnloggableValue(TypeError, ValueError):
    """``self.log`` got a value that is not a number (a TypeError; a ValueError too, as Lightning raises)."""


@dataclass(slots=True)
class _Entry:
    on_step: bool
    on_epoch: bool
    prog_bar: bool
    logger: bool
    sync_dist: bool
    reduce_fx: str | Callable
    pending: list = field(default_factory=list)      # device scalars or python numbers
    pending_sizes: list = field(default_factory=list)
    weighted_sum: float = 0.0
    weight: float = 0.0
    maximum: float = -math.inf
    minimum: float = math.inf
    values: list = field(default_factory=list)       # only kept for custom reduce callables
    last: float | None = None
    metric: Any = None                                # a torchmetrics Metric: its compute() is the epoch value

    def fold(self, values: list[float], sizes: list[int]) -> None:
        if not values:
            return
        # one value at a time, in order, so the sums round alike however the values were grouped into flushes
        # (a resumed run flushes at other points than an uninterrupted one)
        total, weight = self.weighted_sum, self.weight
        if self.reduce_fx == "mean":
            for v, n in zip(values, sizes):
                total += v * n
                weight += n
        else:
            for v, n in zip(values, sizes):
                total += v
                weight += n
        self.weighted_sum, self.weight = total, weight
        self.maximum = max(self.maximum, *values)
        self.minimum = min(self.minimum, *values)
        if callable(self.reduce_fx):
            self.values.extend(values)
        self.last = values[-1]

    def epoch_value(self, strategy: Any) -> float:
        if self.metric is not None:
            # torchmetrics synchronises its own state across processes inside compute()
            value = self.metric.compute()
            self.metric.reset()
            return float(value)
        fx = self.reduce_fx
        if callable(fx):
            return float(fx(torch.tensor(self.values, dtype=torch.float64)))
        if fx in ("mean", "sum"):
            pair = torch.tensor([self.weighted_sum, self.weight], dtype=torch.float64)
            if self.sync_dist:
                pair = strategy.reduce(pair, "sum")
            s, w = pair.tolist()
            return s / w if fx == "mean" else s
        value = torch.tensor(self.maximum if fx == "max" else self.minimum, dtype=torch.float64)
        if self.sync_dist:
            value = strategy.reduce(value, fx)
        return float(value)


_SAVED_FIELDS = ("on_step", "on_epoch", "prog_bar", "logger", "sync_dist", "reduce_fx", "weighted_sum", "weight",
                 "maximum", "minimum", "values", "last")


class Results:
    """The values logged during one stage ("train", "validate", "test")."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.entries: dict[str, _Entry] = {}
        self.batch_size = 1
        self.suffix = ""  # "/dataloader_idx_N" while one of several eval loaders runs
        self.in_step = True  # False while epoch-level hooks run
        # The losses since the last flush, written in place into one preallocated buffer: a list of
        # one new scalar tensor per step kept small blocks alive between each step's large transient
        # ones (in one probe of the demo, flushing every step kept the peak RSS 12 MB lower).
        self._loss_buffer: torch.Tensor | None = None
        self._loss_room, self._loss_dtype, self._loss_device = 0, torch.float32, torch.device("cpu")  # record_loss
        self._loss_where: list[tuple[int, int]] = []
        self.window_loss: float | None = None

    def log(self, name: str, value: Any, *, prog_bar: bool = False, logger: bool = True,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
            sync_dist: bool = False, batch_size: int | None = None) -> None:
        if _is_metric(value):
            self._log_metric(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                             sync_dist=sync_dist)
            return
        given, name = name, name + self.suffix if self.suffix else name
        entry = self.entries.get(name)
        if entry is None:
            if "dataloader_idx_" in given:  # checked once per name, when its entry is made
                raise MisconfigurationException(
                    f"self.log({given!r}, ...): 'dataloader_idx_' is reserved in logged names; with several "
                    "evaluation loaders each value is logged as '<name>/dataloader_idx_<i>' for you. Log it "
                    "under a name without 'dataloader_idx_'.")
            if on_step is None:
                on_step = self.stage == "train" and self.in_step
            if on_epoch is None:
                on_epoch = not (self.stage == "train" and self.in_step)
            if not (on_step or on_epoch):
                raise ValueError(f"self.log({name!r}, value, on_step=False, on_epoch=False): logging a value neither "
                                 "per step nor per epoch is not useful, it would never be shown. Set on_step=True "
                                 "and/or on_epoch=True (or leave them unset for the hook's default).")
            entry = self.entries[name] = _Entry(on_step, on_epoch, prog_bar, logger, sync_dist,
                                                _reduce_name(name, reduce_fx))
        if isinstance(value, torch.Tensor):
            if value.dim():  # kept 0-d, so a flush stacks them as they are
                if value.numel() != 1:
                    raise ValueError(f"self.log({name!r}, value): expected a scalar (one element), got a tensor of "
                                     f"shape {tuple(value.shape)}. Reduce it first, e.g. value.mean().")
                value = value.reshape(())
            value = value.detach()
        elif not isinstance(value, numbers.Number) or isinstance(value, complex):
            raise UnloggableValue(f"`self.log({name}, {str(value):.80})` was called with a value that cannot be logged: "
                                  f"expected a number or a one-element tensor, got {type(value).__name__}. Log each "
                                  "number under its own name (self.log_dict for a dict of them).")
        entry.pending.append(value)
        entry.pending_sizes.append(self.batch_size if batch_size is None else batch_size)

    def _log_metric(self, name: str, metric: Any, *, prog_bar: bool, logger: bool, on_step: bool | None,
                    on_epoch: bool | None, sync_dist: bool) -> None:
        """A torchmetrics ``Metric`` (updated by the step): its batch value (the last ``forward``) on
        step, its ``compute()`` over the epoch on epoch, then ``reset()``. A ``MetricCollection``
        logs each member as ``<name>/<member>``."""
        if hasattr(metric, "items") and callable(metric.items):  # MetricCollection
            for member_name, member in metric.items():
                self._log_metric(f"{name}/{member_name}", member, prog_bar=prog_bar, logger=logger,
                                 on_step=on_step, on_epoch=on_epoch, sync_dist=sync_dist)
            return
        name = name + self.suffix if self.suffix else name
        entry = self.entries.get(name)
        if entry is None:
            # the same defaults as a tensor (Lightning's): in training_step the batch value only
            in_train_step = self.stage == "train" and self.in_step
            on_step = in_train_step if on_step is None else on_step
            on_epoch = (not in_train_step) if on_epoch is None else on_epoch
            if not (on_step or on_epoch):
                raise ValueError(f"self.log({name!r}, <{type(metric).__name__}>, on_step=False, on_epoch=False): the "
                                 "metric would never be logged. Set on_epoch=True (compute over the epoch) and/or "
                                 "on_step=True (the batch value).")
            entry = self.entries[name] = _Entry(on_step, on_epoch, prog_bar, logger, False, "mean", metric=metric)
        elif entry.metric is not metric:
            raise ValueError(f"self.log({name!r}, ...): this name was logged with another value before; log each "
                             "metric object under its own name.")
        entry.weight = 1.0  # the epoch value exists once the metric was logged
        if entry.on_step:
            batch_value = getattr(metric, "_forward_cache", None)
            if isinstance(batch_value, torch.Tensor) and batch_value.numel() == 1:
                entry.pending.append(batch_value.detach().reshape(()))
                entry.pending_sizes.append(0)  # the step value only; the epoch value comes from compute()

    def record_loss(self, loss: torch.Tensor, global_step: int, batch_idx: int) -> None:
        """Keep the loss to check finiteness and show it, without reading it now (an in-place copy
        into the buffer: no allocation that outlives the step, no sync)."""
        n = len(self._loss_where)
        buffer = self._loss_buffer
        # the common step: room left, and the loss's dtype and device those the buffer took last time
        # (compared without asking the buffer: each tensor call costs microseconds between a step's matmuls)
        if not (n < self._loss_room and loss.dtype is self._loss_dtype and loss.device == self._loss_device):
            if (buffer is None or n == buffer.numel() or buffer.device != loss.device
                    or (buffer.dtype != loss.dtype
                        and torch.promote_types(buffer.dtype, loss.dtype) != buffer.dtype)):
                # first use, full (more steps between two flushes than it holds), or the loss moved or changed
                # dtype: a new buffer with the losses so far, in a dtype that holds both exactly
                held = buffer if n else None  # the n losses so far (n > 0: the buffer exists)
                dtype = loss.dtype if held is None else torch.promote_types(held.dtype, loss.dtype)
                grown = torch.empty(max(64, 2 * n), dtype=dtype, device=loss.device)
                if held is not None:
                    grown[:n].copy_(held[:n])
                buffer = self._loss_buffer = grown
            self._loss_room, self._loss_dtype, self._loss_device = buffer.numel(), loss.dtype, loss.device
        assert buffer is not None  # the room check above: a buffer with room exists
        value = loss.detach()
        buffer[n] = value if value.dim() == 0 else value.reshape(())  # one in-place copy, no graph
        self._loss_where.append((global_step, batch_idx))

    def weights(self) -> dict[str, float]:
        """Each entry's accumulated weight (what changes when a value is logged and read back)."""
        return {name: e.weight for name, e in self.entries.items()}

    def has_pending(self) -> bool:
        """Values logged since the last ``flush``."""
        return any(e.pending for e in self.entries.values())

    def flush(self) -> tuple[int, int] | None:
        """Read every pending value back in one transfer. Returns (step, batch_idx) of the first
        non-finite loss since the last flush, or None."""
        tensors = [v for e in self.entries.values() for v in e.pending if isinstance(v, torch.Tensor)]
        if self._loss_where and self._loss_buffer is not None:  # losses recorded: the buffer exists
            tensors += self._loss_buffer[:len(self._loss_where)].unbind()
        host = iter(_read_back(tensors))
        for entry in self.entries.values():
            values = [next(host) if isinstance(v, torch.Tensor) else float(v) for v in entry.pending]
            entry.fold(values, entry.pending_sizes)
            entry.pending.clear()
            entry.pending_sizes.clear()
        losses = list(host)
        where = self._loss_where
        self._loss_where = []
        if losses:
            self.window_loss = sum(losses) / len(losses)
            if not all(map(math.isfinite, losses)):
                return next(at for value, at in zip(losses, where) if not math.isfinite(value))
        return None

    def step_metrics(self, strategy: Any = None) -> dict[str, float]:
        """The latest value of each on_step metric, named ``x_step`` when also on_epoch. With ``strategy`` (a
        point where every rank publishes: a collective is allowed), a value logged with ``sync_dist=True`` is
        reduced over the ranks by its ``reduce_fx`` (as Lightning reduces it when logged): one collective per
        kind of reduction. Without it, this rank's own values (a lazy read must not wait for the others)."""
        values = {k: e.last for k, e in self.entries.items() if e.on_step and e.last is not None}
        if strategy is not None and strategy.world_size > 1:
            by_op: dict[str, list[str]] = {}
            for k in values:
                fx = self.entries[k].reduce_fx
                if self.entries[k].sync_dist:
                    by_op.setdefault(fx if fx in ("mean", "sum", "max", "min") else "mean", []).append(k)
            for op, names in by_op.items():
                reduced = strategy.reduce(torch.tensor([values[k] for k in names], dtype=torch.float64), op)
                values.update(zip(names, reduced.tolist()))
        return {(_forked(k, "step") if self.entries[k].on_epoch else k): v for k, v in values.items()}

    def pending_step_values(self) -> dict[str, Any]:
        """The latest value logged since the last ``flush`` of each on_step metric, as it was logged (a
        detached 0-d tensor where it stays: no read-back), named as ``step_metrics`` names them. A
        Python number becomes a float64 tensor; an integer tensor a float one (``callback_metrics``
        holds floating tensors, as Lightning's)."""
        out = {}
        for k, e in self.entries.items():
            if e.on_step and e.pending:
                v = e.pending[-1]
                if not isinstance(v, torch.Tensor):
                    v = torch.tensor(float(v), dtype=torch.float64)
                elif not v.is_floating_point():
                    v = v.to(torch.get_default_dtype())
                out[_forked(k, "step") if e.on_epoch else k] = v
        return out

    def epoch_metrics(self, strategy: Any) -> dict[str, float]:
        """The epoch value of each on_epoch metric, named ``x_epoch`` when also on_step."""
        return {(_forked(k, "epoch") if e.on_step else k): e.epoch_value(strategy)
                for k, e in self.entries.items() if e.on_epoch and e.weight > 0}

    def plain_names(self) -> dict[str, str]:
        """``{x_step: x, x_epoch: x}`` for the metrics logged both on step and on epoch
        (``x_epoch/dataloader_idx_0`` -> ``x/dataloader_idx_0``)."""
        return {_forked(name, tag): name for name, e in self.entries.items() if e.on_step and e.on_epoch
                for tag in ("step", "epoch")}

    def names(self, which: str) -> set[str]:
        """Metric names flagged ``prog_bar`` or ``logger`` (as they appear in the outputs)."""
        out = set()
        for k, e in self.entries.items():
            if getattr(e, which):
                out.update([_forked(k, "step"), _forked(k, "epoch")] if (e.on_step and e.on_epoch) else [k])
        return out

    def state_dict(self) -> dict[str, Any]:
        """Host-side accumulators (call after ``flush``); entries with a custom reduce callable
        are left out (a callable cannot be saved safely)."""
        return {name: {f: getattr(e, f) for f in _SAVED_FIELDS}
                for name, e in self.entries.items() if isinstance(e.reduce_fx, str) and e.metric is None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        for name, fields in state.items():
            entry = _Entry(fields["on_step"], fields["on_epoch"], fields["prog_bar"], fields["logger"],
                           fields["sync_dist"], fields["reduce_fx"])
            for f in _SAVED_FIELDS:
                setattr(entry, f, fields[f])
            self.entries[name] = entry

    def reset(self) -> None:
        self.entries.clear()
        self._loss_where.clear()
        self.window_loss = None


def _forked(name: str, tag: str) -> str:
    """``name_tag``, the tag before a ``/dataloader_idx_N`` suffix, as Lightning names them."""
    base, sep, idx = name.rpartition("/dataloader_idx_")
    return f"{base}_{tag}{sep}{idx}" if sep else f"{name}_{tag}"


def _is_metric(value: Any) -> bool:
    """A torchmetrics Metric or MetricCollection, recognised without importing torchmetrics."""
    return (isinstance(value, torch.nn.Module)
            and any(cls.__module__.startswith("torchmetrics") for cls in type(value).__mro__)
            and callable(getattr(value, "compute", None)) and callable(getattr(value, "reset", None)))


def _read_back(tensors: list[torch.Tensor]) -> list[float]:
    """0-d tensors as floats, in one device-to-host transfer.

    One ``torch.stack`` of the tensors as they are (dtype promotion gives the widest float among
    them) costs ~35 µs for 100 values; converting each first cost ~430 µs.
    """
    if not tensors:
        return []
    try:
        return torch.stack(tensors).tolist()
    except RuntimeError:  # different devices: bring them together first
        return torch.stack([t.reshape(()).to("cpu", torch.float64) for t in tensors]).tolist()
