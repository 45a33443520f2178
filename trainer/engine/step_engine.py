"""One training step's mechanics, for both doors: the Trainer's loop and the Accelerator's
``accumulate()`` / ``backward()`` / prepared optimizer drive the same ``StepEngine``.

    begin_micro(size, data_ends)       a micro-batch of ``size`` items opens (or continues) a window;
                                       True when it closes it (k-th micro-batch, or the data ends)
    scale_loss(loss, num_items)        weight it by its items (below)
    backward(loss)                     precision scaling, gradient sync skipped off the window's end
    step(optimizer)                    at the window's end: exact normalisation, unscale, clip, step;
                                       returns a StepResult (stepped, or skipped on inf/nan under fp16)
    zero_grad(optimizer)

Each part runs through the strategy's ``Driver`` (strategies/driver.py): the engine never asks
which strategy it holds.

Accumulation is exact and item-weighted. A window is ``accumulation_steps`` (k) micro-batches,
or fewer when the data ends first. Each micro-batch's loss counts with its number of items (its
batch size, or ``num_items`` when the loss is a sum over that many items), so a step equals one
big batch of the window's items, whatever the batch sizes. The loss of a micro-batch of size b is
scaled by b / (k * b0) before backward (b0: the window's first micro-batch size) -- for a full
window of equal batches that is the plain 1/k, with no extra work -- and at the window's end the
gradients are corrected only if the window did not hold k * b0 items (a short last window,
uneven batches, ``num_items``), by k * b0 / (its item count).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, ContextManager, Iterable, Iterator

import torch

from trainer.strategies.driver import StepResult, WindowFix


def count_items(batch: Any) -> int | None:
    """How many samples a collated batch holds: what both doors weigh a micro-batch by.

    The first dimension of the first tensor found depth first (through mappings, lists, tuples
    and dataclasses); with no tensor, the length of the first list of plain items (the strings
    of a text batch). ``None`` when the batch has no size (a 0-dim tensor first, or no tensor and
    no list of plain items): such a micro-batch weighs as one sample. Host-side; no sync.
    """
    kind = type(batch)
    if (kind is tuple or kind is list) and batch and type(batch[0]) is torch.Tensor:
        first = batch[0]  # the common (inputs, targets) batch, without the general walk
        return int(first.shape[0]) if first.dim() else None
    found = _first_tensor_or_items(batch)
    if isinstance(found, torch.Tensor):
        return int(found.shape[0]) if found.dim() else None
    return found


def _first_tensor_or_items(data: Any) -> torch.Tensor | int | None:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, Mapping):
        values: list[Any] = list(data.values())
    elif isinstance(data, (list, tuple)):
        values = list(data)
    elif dataclasses.is_dataclass(data) and not isinstance(data, type):
        values = [getattr(data, f.name) for f in dataclasses.fields(data)]
    else:
        return None
    plain: int | None = None
    for v in values:
        found = _first_tensor_or_items(v)
        if isinstance(found, torch.Tensor):
            return found
        if plain is None and found is not None:
            plain = found
    if plain is None and isinstance(data, (list, tuple)) and data and not any(
            isinstance(v, (torch.Tensor, Mapping, list, tuple)) or dataclasses.is_dataclass(v) for v in data):
        plain = len(data)
    return plain


class Window:
    """One accumulation window: micro-batches seen, the first one's size, items counted (an int, or a
    tensor once a step returned ``num_items`` as one), and how far it got."""

    __slots__ = ("micro", "ref", "size", "items", "counted", "has_loss", "closes", "item_counted",
                 "corrected", "stepped", "in_backward", "pre_weighted")

    def __init__(self) -> None:
        self.micro = 0
        self.ref = 1
        self.size = 1  # items in the current micro-batch
        self.items: Any = 0
        self.counted = False  # some micro-batch gave num_items
        self.has_loss = False
        self.closes = False  # the current micro-batch is the window's last
        self.item_counted = False  # the current micro-batch's items are in `items`
        self.corrected = False
        self.stepped = False
        self.in_backward = False  # the Trainer's oom_split: did the failing piece reach its backward?
        self.pre_weighted = False  # losses weighted by item_weight: already the global mean, no correction


class _Progress:
    __slots__ = ("global_step",)

    def __init__(self) -> None:
        self.global_step = 0


class StepEngine:
    """Owns the accumulation window, gradient-sync skipping, the exact normalisation and the
    optimizer-step count, and drives the strategy's ``Driver`` (backward, unscale, clip, step,
    zero_grad) without asking which strategy it holds.

    Its plan -- accumulation steps, the optimizers a window's normalisation fixes, the object that
    counts steps, the driver, whether every step counts (manual optimization) -- is set when it is
    built and changed only through ``plan`` / ``planned``; per-sample weights through ``weigh_items``,
    the profiler through ``attach_profiler``.

    Args:
        strategy: where tensors live and how gradients move (its ``driver()`` is the first driver).
        accumulation_steps: micro-batches per optimizer step.
        progress: the object whose ``global_step`` counts optimizer steps (the Trainer's state);
            by default the engine's own.
    """

    def __init__(self, strategy: Any, accumulation_steps: int = 1, progress: Any = None) -> None:
        self.strategy = strategy
        self._driver: Any = strategy.driver()
        self._accumulation = accumulation_steps
        self._progress = progress if progress is not None else _Progress()
        self._optimizers: list[torch.optim.Optimizer] = []  # whose gradients a window's normalisation fixes
        self._count_each = False  # manual optimization: every step counts, however many in a window
        self.window = Window()
        # Ranks holding uneven items in a window (a re-dealt epoch: reshard.py): each sample's weight in the
        # global mean, world size / the window's items on every rank. Applied before backward, since a
        # correction after DDP's average would differ between ranks (and so would their weights).
        self._item_weight: float | None = None
        self._profiler: Any = None  # a Profiler while a Trainer stage is profiled (the strategy is never wrapped)

    # -- the plan -------------------------------------------------------------------------------
    @property
    def accumulation_steps(self) -> int:
        return self._accumulation

    @property
    def progress(self) -> Any:
        return self._progress

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self._optimizers)

    @property
    def driver(self) -> Any:
        return self._driver

    @property
    def item_weight(self) -> float | None:
        return self._item_weight

    @property
    def profiler(self) -> Any:
        return self._profiler

    def plan(self, *, accumulation: int | None = None, optimizers: Iterable[torch.optim.Optimizer] | None = None,
             progress: Any = None, driver: Any = None, count_every_step: bool | None = None) -> None:
        """Change what the next windows run with; an argument left out keeps its value.

        Args:
            accumulation: micro-batches per optimizer step.
            optimizers: the optimizers whose gradients a window's normalisation fixes.
            progress: the object whose ``global_step`` counts optimizer steps.
            driver: what a strategy's ``prepare`` returned for the prepared models and optimizers.
            count_every_step: every ``step`` counts (manual optimization: a module may step several
                optimizers per batch), instead of once per window.
        """
        if accumulation is not None:
            if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
                raise ValueError(f"StepEngine.plan(accumulation={accumulation!r}): expected an int >= 1 "
                                 "(micro-batches per optimizer step).")
            self._accumulation = accumulation
        if optimizers is not None:
            self._optimizers = list(optimizers)
        if progress is not None:
            self._progress = progress
        if driver is not None:
            self._driver = driver
        if count_every_step is not None:
            self._count_each = count_every_step

    @contextlib.contextmanager
    def planned(self, **plan: Any) -> Iterator[StepEngine]:
        """``plan(**plan)`` for the block, then the plan as it was and a fresh window (a tuner's trial
        steps inside a fit)."""
        saved = (self._accumulation, self._optimizers, self._progress, self._driver, self._count_each)
        self.plan(**plan)
        try:
            yield self
        finally:
            self._accumulation, self._optimizers, self._progress, self._driver, self._count_each = saved
            self.reset_window()

    def weigh_items(self, weight: float | None) -> None:
        """Each sample of the next micro-batches weighs ``weight`` in the global mean (a re-dealt epoch
        with uneven items per rank: reshard.py); None: weigh by the window's own count."""
        self._item_weight = weight

    def attach_profiler(self, profiler: Any) -> None:
        """Time the driver's calls under ``profiler`` (None: stop timing)."""
        self._profiler = profiler

    # -- the window -----------------------------------------------------------------------------
    @property
    def in_window(self) -> bool:
        """A window is open: some of its micro-batches ran, its last has not."""
        return self.window.micro > 0 and not self.window.closes

    def reset_window(self) -> None:
        """Start the next micro-batch in a fresh window (a new epoch)."""
        self.window = Window()

    def begin_micro(self, size: int, data_ends: bool) -> bool:
        """A micro-batch of ``size`` items starts (``data_ends``: no batch follows it). Returns
        whether it closes the window: gradients sync and the optimizer steps after it."""
        window = self.window
        if window.closes or window.micro == 0:
            window = self.window = Window()
            window.ref = size
        window.micro += 1
        window.size = size
        window.closes = window.micro >= self._accumulation or data_ends
        window.item_counted = False
        return window.closes

    def sync_context(self, models: Iterable[torch.nn.Module], sync: bool) -> ContextManager[Any]:
        """Gradient all-reduce only when ``sync`` (the window's last micro-batch)."""
        return _NOTHING if sync else self._no_sync(models)

    @contextlib.contextmanager
    def _no_sync(self, models: Iterable[torch.nn.Module]) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for model in models:
                stack.enter_context(self.strategy.no_backward_sync(model))
            yield

    @contextlib.contextmanager
    def piece(self) -> Iterator[Window]:
        """One piece of a split micro-batch (``oom_split``): if the block fails, the piece's items and
        loss do not count; ``window.in_backward`` then tells whether it reached its backward."""
        window = self.window
        saved = (window.items, window.counted, window.has_loss)
        window.in_backward = False
        try:
            yield window
        except BaseException:
            window.items, window.counted, window.has_loss = saved
            raise

    def scale_loss(self, loss: torch.Tensor, num_items: Any = None, piece_size: int | None = None) -> torch.Tensor:
        """The loss weighted for its window (see the module docstring). ``piece_size``: the loss is
        over one piece of the micro-batch of that many items (each piece counts). Outside a window
        (no ``begin_micro``): divided by ``accumulation_steps``, as Accelerate's backward does."""
        window, k = self.window, self._accumulation
        window.in_backward = True  # the micro-batch reached its backward (oom_split asks)
        if window.micro == 0 or (window.closes and window.stepped):
            return loss / k if k > 1 else loss
        size = window.size if piece_size is None else piece_size
        if not window.item_counted or piece_size is not None:  # a second backward in one micro-step counts once
            window.item_counted = True
            if num_items is None:
                window.items += size
            else:
                window.counted = True
                window.items = window.items + num_items
        window.has_loss = True
        if num_items is not None:  # the loss is a sum over num_items items (counted over every rank)
            return loss * (1.0 / (k * window.ref))
        if self._item_weight is not None:
            window.pre_weighted = True
            return loss * (self._item_weight * size)
        if k != 1 or size != window.ref:
            return loss * (size / (k * window.ref))
        return loss

    def timed(self, action: str) -> ContextManager[Any]:
        """Times ``action`` under the profiler, if one is set (a shared no-op context otherwise).
        The per-step calls below skip even the no-op context when nothing is profiled: entering
        one costs about as much as the rest of the engine's work in a step."""
        return _NOTHING if self._profiler is None else self._profiler.profile(action)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward with the precision's loss scaling (``loss`` already weighted)."""
        if self._profiler is None:
            self._driver.backward(loss, *args, **kwargs)
            return
        with self._profiler.profile("backward"):
            self._driver.backward(loss, *args, **kwargs)

    def backward_by(self, backward: Callable[[torch.Tensor], Any], loss: torch.Tensor) -> None:
        """``backward(loss)`` (a module's own ``backward``) in place of the driver's, after the precision's
        loss scaling (``loss`` already weighted)."""
        with self.timed("backward"):
            self._driver.backward_by(backward, loss)

    def manual_backward(self, loss: torch.Tensor, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        """Manual optimization's backward: no wrapper synced it, so the strategy then makes the
        gradients of ``module``'s parameters the mean over processes."""
        self.backward(loss, *args, **kwargs)
        self.strategy.average_gradients([p for p in module.parameters() if p.grad is not None])

    # -- the step -------------------------------------------------------------------------------
    def finish_window(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per closed window, before anyone reads the gradients (clip, step): make them the
        mean over the window's items, for every planned optimizer's parameters (the driver rescales)."""
        window, k = self.window, self._accumulation
        if not window.closes or window.corrected or not window.has_loss:
            return
        window.corrected = True
        if not window.counted and (window.pre_weighted or window.items == k * window.ref):
            return
        optimizers = self._optimizers or [optimizer]
        # each parameter once, in first-seen order
        self._driver.renormalise(WindowFix(
            lambda: list({id(p): p for opt in optimizers for p in _params(opt)}.values()), self._factor,
            window.counted, window.items, k * window.ref))

    def _factor(self) -> Any:
        """The losses were scaled by 1 / (k * ref) per item. With ``num_items`` the mean is over every
        item of the window on every process: DDP averages over processes, so the factor is world size
        over the global item count (kept a tensor when the step returned one: no host sync). Without
        it every process has the same number of samples (the distributed sampler pads), and the local
        count is the global one."""
        strategy, window, k = self.strategy, self.window, self._accumulation
        world_size = strategy.world_size
        items = window.items
        if window.counted:
            if world_size > 1:
                items = strategy.reduce(torch.as_tensor(items, dtype=torch.float64, device=strategy.root_device), "sum")
            if isinstance(items, torch.Tensor):  # a window of zero items leaves its (zero) gradients as they are
                return (k * window.ref * world_size / items.clamp_min(1)).to(torch.float32)
            return k * window.ref * world_size / max(items, 1)
        return k * window.ref / max(items, 1)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo loss scaling (16-mixed) so the gradients can be read or clipped; once per step."""
        self.finish_window(optimizer)
        self._driver.unscale(optimizer)

    def clip(self, optimizer: torch.optim.Optimizer | None, value: float, algorithm: str = "norm",
             parameters: Iterable[torch.nn.Parameter] | None = None, norm_type: float = 2.0) -> Any:
        """Unscale, then clip by norm (returns the norm before) or by value: ``optimizer``'s gradients,
        or ``parameters``' (``optimizer`` None: every planned optimizer is unscaled first, as
        ``Accelerator.clip_grad_norm_`` does)."""
        for opt in ((optimizer,) if optimizer is not None else self._optimizers):
            self.unscale(opt)
        params = list(parameters) if parameters is not None else _params(optimizer) if optimizer is not None else []
        with self.timed("clip_gradients"):
            if algorithm == "norm":
                return self._driver.clip_norm(params, value, norm_type)
            self._driver.clip_value(params, value)
        return None

    def step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> StepResult:
        """The optimizer step, counted once per window (every step under ``count_every_step``).
        Returns the driver's ``StepResult``: skipped when the fp16 scaler found inf/nan gradients."""
        self.finish_window(optimizer)
        if self._profiler is None:
            result = self._driver.step(optimizer, closure)
        else:
            with self._profiler.profile("optimizer_step"):
                result = self._driver.step(optimizer, closure)
        window = self.window
        if window.micro == 0 or self._count_each:
            self._progress.global_step += 1
        elif not window.stepped:
            window.stepped = True
            self._progress.global_step += 1
        return result

    def zero_grad(self, optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        if self._profiler is None:
            self._driver.zero_grad(optimizer, set_to_none)
            return
        with self._profiler.profile("zero_grad"):
            self._driver.zero_grad(optimizer, set_to_none)


_NOTHING = contextlib.nullcontext()  # shared: a nullcontext holds no state


def _params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]
