"""``BatchSizeFinder``: the largest batch that trains without running out of memory, found at the start of fit
(``trainer.tuner.Tuner.scale_batch_size`` runs it alone)."""

from __future__ import annotations

import gc
from typing import Any

import torch

from trainer.strategies.support import rank_zero_info

from .base import Callback
from .tuning import Snapshot, TunerExit, attr_holders, quiet_logging, set_attr, train_steps
from .view import TrainerView


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


class BatchSizeFinder(Callback):
    """Find the largest batch size that trains without running out of memory, at the start of fit.

    The batch size is an attribute (``batch_arg_name``) of the module, its hparams or the datamodule, read by its
    ``train_dataloader()``. Each trial sets it, asks for a fresh loader and trains ``steps_per_trial`` steps.
    ``mode="power"`` doubles it from ``init_val`` until a trial runs out of memory (and keeps the last that fit);
    ``"binsearch"`` then bisects between the last fit and the first failure; at most ``max_trials`` trials in all. It
    never grows past the dataset.
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
        self.early_exit = False  # the Tuner sets it: end fit after the search (TunerExit)
        self.optimal_batch_size: int | None = init_val
        self.trials: list[tuple[int, bool]] = []  # (batch size, fit)

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        holders = attr_holders(trainer, module, (self._batch_arg_name,))
        owner = trainer.datamodule if _defines_train_loader(trainer.datamodule) else module
        if not holders or not _defines_train_loader(owner):
            raise AttributeError(f"BatchSizeFinder: no attribute {self._batch_arg_name!r} on {type(module).__name__} "
                                 "(or its hparams, or the datamodule) with a train_dataloader() that reads it. The "
                                 "finder changes that attribute and asks train_dataloader() for a new loader; "
                                 "dataloaders passed to fit directly cannot be resized.")
        self.optimal_batch_size = self.scale_batch_size(trainer, module, holders, owner)
        set_attr(holders, self.optimal_batch_size)
        rank_zero_info(f"BatchSizeFinder: batch size set to {self.optimal_batch_size} (trials: {self.trials}).")
        if self.early_exit:
            raise TunerExit()
        trainer.fit_loop.reload_train_dataloader()

    def scale_batch_size(self, trainer: TrainerView, module: Any, holders: list, owner: Any) -> int:
        snapshot = Snapshot(trainer, module)
        size, low, high = self._init_val, 0, None
        quiet = quiet_logging(module)
        try:
            for _ in range(self._max_trials):
                set_attr(holders, size)
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

    def _trial(self, trainer: TrainerView, module: Any, loader: Any) -> bool:
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
    return definer is not None and definer.__module__ not in ("trainer.module", "trainer.data.datamodule")


def _dataset_len(loader: Any) -> int | None:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None
