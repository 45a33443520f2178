"""The tuner's two searches, as callbacks that run at ``on_fit_start`` (``trainer.tuner.Tuner`` drives the same
callbacks): ``LearningRateFinder`` (a learning-rate range test) and ``BatchSizeFinder`` (the largest batch that
fits). Both train a few steps of their own -- never counted in ``global_step``, never logged -- and then put the
module's weights, the optimizer, the precision's scaler and every RNG back as they were."""

from __future__ import annotations

import copy
import gc
import itertools
import os
import random
from typing import Any, Iterator

import torch

from trainer.strategies._util import rank_zero_info, rank_zero_warn

from .base import Callback


class TunerExit(BaseException):
    """Ends the ``fit`` a ``Tuner`` started once its search is done (not an error)."""


# -- what a search trains on and leaves behind ---------------------------------------------------------------

class _Snapshot:
    """The module's weights and buffers, the optimizers' states, the precision's scaler and the RNG states."""

    def __init__(self, trainer: Any, module: torch.nn.Module) -> None:
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.optimizers = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
        self.precision = copy.deepcopy(trainer.strategy.precision.state_dict())
        self.rng = (torch.get_rng_state(), random.getstate(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, _numpy_state())

    def restore(self, trainer: Any, module: torch.nn.Module) -> None:
        module.load_state_dict(self.weights)
        for opt, state in zip(trainer.optimizers, self.optimizers):
            opt.load_state_dict(state)
            opt.zero_grad(set_to_none=True)
        trainer.strategy.precision.load_state_dict(self.precision)
        torch_state, python_state, cuda_states, numpy_state = self.rng
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if numpy_state is not None:
            import numpy

            numpy.random.set_state(numpy_state)


def _numpy_state() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.random.get_state()


class _Counter:
    global_step = 0


def train_steps(trainer: Any, module: Any, loader: Any, num_steps: int, synced: bool = True,
                before_step: Any = None) -> Iterator[torch.Tensor]:
    """Train up to ``num_steps`` steps of one batch each on ``loader`` with the fit's optimizer, through the
    step engine (precision, clipping aside), yielding each step's loss. ``synced=False``: no collective runs
    (each process trains alone: an out-of-memory error on one rank leaves no other waiting in an all-reduce).
    ``before_step(i)`` runs before each step (the range test sets the rate there)."""
    accel, optimizer = trainer.accelerator, trainer.optimizers[0]
    engine = accel.engine
    step_fn = trainer.fit_loop.training_step if synced else trainer.strategy.local_training_step(module)
    saved = (engine.progress, engine.accumulation_steps, list(engine.optimizers))
    engine.progress, engine.accumulation_steps, engine.optimizers = _Counter(), 1, [optimizer]
    module.train()
    try:
        for i, batch in enumerate(itertools.islice(loader, num_steps)):
            if before_step is not None:
                before_step(i)
            batch = accel.batch_to_device(batch)
            engine.begin_micro(1, False)
            with accel.autocast():
                output = step_fn(batch, i)
            loss, num_items = (output.get("loss"), output.get("num_items")) if isinstance(output, dict) else (output, None)
            if loss is None:
                raise ValueError(f"training_step returned {type(output).__name__} without a loss at batch_idx {i} of "
                                 "the tuner's trial; it needs a loss tensor (or a dict with 'loss') to tune on.")
            engine.backward(engine.scale_loss(loss, num_items))
            engine.step(optimizer)
            engine.zero_grad(optimizer)
            yield loss.detach()
    finally:
        engine.progress, engine.accumulation_steps, engine.optimizers = saved
        engine.reset_window()


def _quiet_logging(module: Any) -> Any:
    """``self.log`` in the trial's training_step goes nowhere, without the "outside a stage" warning."""
    import warnings

    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.filterwarnings("ignore", message=r"self\.log\(")
    return manager


# -- the learning-rate range test ------------------------------------------------------------------------------

class LRFinderResult:
    """What ``lr_find`` measured: ``results`` = {"lr": [...], "loss": [...]} (the loss smoothed, as Lightning's),
    ``suggestion()``, ``plot()`` and the PNG it wrote (``png_path``)."""

    def __init__(self, mode: str, min_lr: float, max_lr: float, num_training: int) -> None:
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, min_lr, max_lr, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self.png_path: str | None = None
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate at the steepest descent of the loss (ignoring the first ``skip_begin`` and last ``skip_end``
        points); None when fewer than two finite points remain."""
        lrs = torch.tensor(self.results["lr"][skip_begin:-skip_end], dtype=torch.float64)
        losses = torch.tensor(self.results["loss"][skip_begin:-skip_end], dtype=torch.float64)
        finite = torch.isfinite(losses)
        if int(finite.sum()) < 2:
            rank_zero_warn(f"lr_find: {int(finite.sum())} usable point(s) after skipping {skip_begin} at the start and "
                           f"{skip_end} at the end: no suggestion. Raise num_training or lower early_stop_threshold's "
                           "sensitivity (a larger value), or use a larger dataset.")
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses[finite], spacing=[lrs[finite]])[0]
        kept = torch.arange(len(self.results["lr"]))[skip_begin:-skip_end][finite]
        self._optimal_idx = int(kept[int(torch.argmin(gradients))])
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """The loss against the rate (log scale in exponential mode), with the suggestion marked."""
        import matplotlib

        if ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, ax = (plt.subplots(figsize=(7, 4), dpi=100) if ax is None else (ax.figure, ax))
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if suggest and self.suggestion() is not None:
            i = self._optimal_idx
            ax.plot(self.results["lr"][i], self.results["loss"][i], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return figure

    def save_png(self, directory: str) -> str | None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            rank_zero_info("lr_find: no picture, matplotlib is not installed (pip install matplotlib).")
            return None
        import matplotlib.pyplot as plt

        os.makedirs(directory, exist_ok=True)
        figure = self.plot(suggest=True)
        self.png_path = os.path.join(directory, "lr_find.png")
        figure.savefig(self.png_path)
        plt.close(figure)
        return self.png_path


def _attr_holders(trainer: Any, module: Any, names: tuple[str, ...]) -> list[tuple[Any, str]]:
    """(object, name) for each of module, module.hparams, datamodule, datamodule.hparams holding one of ``names``."""
    found = []
    for owner in (module, trainer.datamodule):
        if owner is None:
            continue
        for holder in (owner, getattr(owner, "hparams", None)):
            if holder is None:
                continue
            for name in names:
                if (name in holder) if isinstance(holder, dict) else hasattr(holder, name):
                    found.append((holder, name))
                    break
    return found


def _set_attr(holders: list[tuple[Any, str]], value: Any) -> None:
    for holder, name in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)


class LearningRateFinder(Callback):
    """A learning-rate range test at the start of fit: ``num_training_steps`` steps with the rate growing from
    ``min_lr`` to ``max_lr`` (exponentially or linearly), stopped early once the smoothed loss exceeds
    ``early_stop_threshold`` x its best. The result is ``self.optimal_lr`` (an ``LRFinderResult``), a PNG
    (``lr_find.png`` in the run's log directory), and -- with ``update_attr`` -- the suggestion written to the
    module's ``lr``/``learning_rate`` (or ``attr_name``) with the optimizer rebuilt from it. The weights, the
    optimizer, the scaler and the RNG states are then as before the test.

    On several processes every step is a synced DDP step and the loss is the mean over processes.
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"LearningRateFinder(mode={mode!r}): expected one of {self.SUPPORTED_MODES}.")
        if not 0 < min_lr < max_lr:
            raise ValueError(f"LearningRateFinder(min_lr={min_lr}, max_lr={max_lr}): expected 0 < min_lr < max_lr.")
        if not isinstance(num_training_steps, int) or num_training_steps < 2:
            raise ValueError(f"LearningRateFinder(num_training_steps={num_training_steps!r}): expected an int >= 2.")
        self._min_lr, self._max_lr, self._num_training_steps = min_lr, max_lr, num_training_steps
        self._mode, self._early_stop_threshold = mode, early_stop_threshold
        self._update_attr, self._attr_name = update_attr, attr_name
        self._early_exit = False  # set by the Tuner: end fit after the search
        self._png_dir: str | None = None  # the Tuner's: the run's log directory
        self.optimal_lr: LRFinderResult | None = None

    def _rate(self, i: int) -> float:
        t = i / (self._num_training_steps - 1)
        if self._mode == "linear":
            return self._min_lr + (self._max_lr - self._min_lr) * t
        return self._min_lr * (self._max_lr / self._min_lr) ** t

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        names = (self._attr_name,) if self._attr_name else ("lr", "learning_rate")
        holders = _attr_holders(trainer, module, names) if self._update_attr else []
        if self._update_attr and not holders:
            raise AttributeError(f"LearningRateFinder(update_attr=True): {type(module).__name__} has no attribute "
                                 f"{' or '.join(map(repr, names))} (nor its hparams or the datamodule) to write the "
                                 "suggestion to. Add one and read it in configure_optimizers, pass attr_name=..., "
                                 "or update_attr=False.")
        self.optimal_lr = self.lr_find(trainer, module)
        lr = self.optimal_lr.suggestion()
        if trainer.is_global_zero:
            self.optimal_lr.save_png(self._png_dir or trainer.log_dir)
        if lr is not None and holders:
            _set_attr(holders, lr)
            trainer.fit_loop.setup_optimizers(module)  # the optimizer takes the new rate from configure_optimizers
            rank_zero_info(f"LearningRateFinder: learning rate set to {lr:.3g}.")
        if self._early_exit:
            raise TunerExit()

    def lr_find(self, trainer: Any, module: Any) -> LRFinderResult:
        result = LRFinderResult(self._mode, self._min_lr, self._max_lr, self._num_training_steps)
        snapshot = _Snapshot(trainer, module)
        optimizer = trainer.optimizers[0]

        def set_rate(i: int) -> None:
            for group in optimizer.param_groups:
                group["lr"] = self._rate(i)

        average, best, beta = 0.0, float("inf"), 0.98
        quiet = _quiet_logging(module)
        try:
            for i, loss in enumerate(train_steps(trainer, module, _cycle(trainer.train_dataloader),
                                                 self._num_training_steps, before_step=set_rate)):
                if trainer.world_size > 1:
                    loss = trainer.strategy.reduce(loss.float(), "mean")
                value = float(loss)  # the range test's one host sync per step
                average = beta * average + (1 - beta) * value
                smoothed = average / (1 - beta ** (i + 1))
                result.results["lr"].append(self._rate(i))
                result.results["loss"].append(smoothed)
                if self._early_stop_threshold is not None and i > 1 and smoothed > self._early_stop_threshold * best:
                    break
                best = min(best, smoothed)
        finally:
            quiet.__exit__(None, None, None)
            snapshot.restore(trainer, module)
        return result


def _cycle(loader: Any) -> Iterator[Any]:
    """The loader's batches, again and again (a range test may want more steps than an epoch has)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


# -- the batch-size search -------------------------------------------------------------------------------------

def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


class BatchSizeFinder(Callback):
    """Find the largest batch size that trains without running out of memory, at the start of fit.

    The batch size is an attribute (``batch_arg_name``) of the module, its hparams or the datamodule, read by its
    ``train_dataloader()``. Each trial sets it, asks for a fresh loader and trains ``steps_per_trial`` steps.
    ``mode="power"`` doubles it from ``init_val`` until a trial runs out of memory (and keeps the last that fit);
    ``"binsearch"`` then bisects between the last fit and the first failure. It never grows past the dataset.
    The largest size that fit is written back (``self.optimal_batch_size``), fit's loader is rebuilt with it, and
    the weights, optimizer and RNG states are as before.

    On several processes each trial trains without collectives, and all processes agree after it (one fails: all
    count it failed), so every rank picks the same size.
    """

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size") -> None:
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"BatchSizeFinder(mode={mode!r}): expected one of {self.SUPPORTED_MODES}.")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BatchSizeFinder({name}={value!r}): expected an int >= 1.")
        self._mode, self._steps_per_trial, self._init_val = mode, steps_per_trial, init_val
        self._max_trials, self._batch_arg_name = max_trials, batch_arg_name
        self._early_exit = False
        self.optimal_batch_size: int | None = init_val
        self.trials: list[tuple[int, bool]] = []  # (batch size, fit)

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        holders = _attr_holders(trainer, module, (self._batch_arg_name,))
        owner = trainer.datamodule if _defines_train_loader(trainer.datamodule) else module
        if not holders or not _defines_train_loader(owner):
            raise AttributeError(f"BatchSizeFinder: no attribute {self._batch_arg_name!r} on {type(module).__name__} "
                                 "(or its hparams, or the datamodule) with a train_dataloader() that reads it. The "
                                 "finder changes that attribute and asks train_dataloader() for a new loader; "
                                 "dataloaders passed to fit directly cannot be resized.")
        self.optimal_batch_size = self.scale_batch_size(trainer, module, holders, owner)
        _set_attr(holders, self.optimal_batch_size)
        rank_zero_info(f"BatchSizeFinder: batch size set to {self.optimal_batch_size} (trials: {self.trials}).")
        if self._early_exit:
            raise TunerExit()
        trainer.fit_loop.reload_train_dataloader()

    def scale_batch_size(self, trainer: Any, module: Any, holders: list, owner: Any) -> int:
        snapshot = _Snapshot(trainer, module)
        size, low, high = self._init_val, 0, None
        quiet = _quiet_logging(module)
        try:
            for _ in range(self._max_trials):
                _set_attr(holders, size)
                loader = owner.train_dataloader()
                fits = self._trial(trainer, module, loader)
                self.trials.append((size, fits))
                limit = _dataset_len(loader)
                if fits:
                    low = size
                    if limit is not None and size >= limit:
                        break  # a batch holds the whole dataset
                    if high is None:
                        size = size * 2 if limit is None else min(size * 2, limit)
                    elif high - low <= 1:
                        break
                    else:
                        size = (low + high) // 2
                else:
                    high = size
                    if self._mode == "power" or high - low <= 1:
                        break
                    size = (low + high) // 2
        finally:
            quiet.__exit__(None, None, None)
            snapshot.restore(trainer, module)
        if low == 0:
            raise RuntimeError(f"BatchSizeFinder: even batch size {self._init_val} ran out of memory "
                               f"(trials: {self.trials}). Lower init_val or free memory.")
        return low

    def _trial(self, trainer: Any, module: Any, loader: Any) -> bool:
        fits = True
        try:
            for _ in train_steps(trainer, module, loader, self._steps_per_trial, synced=False):
                pass
        except Exception as err:
            if not is_oom(err):
                raise
            fits = False
            for opt in trainer.optimizers:
                opt.zero_grad(set_to_none=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if trainer.world_size > 1:  # all fit, or none counts as fitting
            failed = torch.tensor(0.0 if fits else 1.0, device=trainer.strategy.root_device)
            fits = not bool(trainer.strategy.reduce(failed, "max"))
        return fits


def _defines_train_loader(owner: Any) -> bool:
    """``owner`` (a module or datamodule) has its own ``train_dataloader()``, not the base class's refusal."""
    if owner is None:
        return False
    if "train_dataloader" in vars(owner):
        return callable(vars(owner)["train_dataloader"])
    definer = next((cls for cls in type(owner).__mro__ if "train_dataloader" in vars(cls)), None)
    return definer is not None and definer.__module__ not in ("trainer.module", "trainer.datamodule")


def _dataset_len(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
