"""A resumed checkpoint's counters and optimizer settings, checked against the run that resumes it.

``layout.py`` checks that every field has the type this library writes; a field can still hold a
value no run of this configuration could have written: ``loops.batch_idx = 10**12`` (trained on as
if the epoch were done), ``loops.current_epoch = 10**9`` (fit returned at once without a word), an
optimizer param group's ``lr = "abc"`` (a raw ``TypeError`` at the first step). ``check_against_run``
is called by ``restore`` before anything is put back; ``check_position`` once the training loader
exists (the epoch's length is known only then: a DataModule's loader is asked for after its state
is restored, as in Lightning), before the first batch. Each raises ``CheckpointMismatchError``
naming the field, the value and what this run expects.

A checkpoint that finished exactly the run's ``max_epochs`` / ``max_steps`` is not an error (the same
command run again after the job finished): fit says so and trains nothing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from trainer.logs.console import rank_zero_info
from trainer.strategies.checkpoint_io import CheckpointError

# param-group settings torch's own optimizers refuse below zero at construction
_NON_NEGATIVE = ("lr", "weight_decay", "eps", "momentum", "dampening", "lr_decay", "initial_accumulator_value")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint field holds a value this run could not have written (named with what it expects)."""


def _fail(path: str, field: str, value: Any, expected: str, fix: str) -> CheckpointMismatchError:
    text = repr(value)
    shown = f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"
    return CheckpointMismatchError(f"{path!r} does not fit this run: field {field!r} holds {shown}; expected {expected}. "
                                   f"{fix}")


_EDITED = "If the file was edited or made by other code, resume from a checkpoint this run's configuration wrote."


def check_against_run(trainer: Any, ckpt: dict[str, Any], path: str) -> None:
    """The loop counters against ``max_epochs``/``max_steps``, and every optimizer param group's numeric
    settings against this run's optimizers (a one-file checkpoint's; sharded ones keep them in the shards)."""
    cfg, loops = trainer.config, ckpt["loops"]
    epoch, limit = loops["current_epoch"], cfg.epochs_limit
    if epoch > limit:
        raise _fail(path, "loops.current_epoch", epoch, f"at most max_epochs={cfg.max_epochs} of this run "
                    "(a run counts epochs up to its max_epochs)", "If it really trained that far, resume with "
                    f"Trainer(max_epochs=...) above {epoch}. " + _EDITED)
    if epoch == limit or (cfg.max_steps != -1 and loops["global_step"] >= cfg.max_steps):
        done = f"max_epochs={cfg.max_epochs}" if epoch == limit else f"max_steps={cfg.max_steps}"
        if trainer.is_global_zero:
            rank_zero_info(f"Resuming from {path}: it is at epoch {epoch}, global_step {loops['global_step']}, so "
                           f"{done} is already reached and fit trains nothing. Raise {done.split('=')[0]} to train "
                           "further.")
    if isinstance(ckpt.get("optimizer_states"), list):
        for i, (saved, optimizer) in enumerate(zip(ckpt["optimizer_states"], trainer.optimizers)):
            _check_param_groups(saved, optimizer, f"optimizer_states[{i}]", path)


def _check_param_groups(saved: dict[str, Any], optimizer: torch.optim.Optimizer, field: str, path: str) -> None:
    groups = saved.get("param_groups")
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise _fail(path, f"{field}.param_groups", groups, "a list of dicts (optimizer.state_dict()['param_groups'])",
                    _EDITED)
    for j, (group, own) in enumerate(zip(groups, optimizer.param_groups)):
        for key, current in own.items():
            if key == "params" or key not in group:
                continue
            problem = _numeric_problem(group[key], current, key)
            if problem:
                raise _fail(path, f"{field}.param_groups[{j}].{key}", group[key], problem,
                            f"This run's {type(optimizer).__name__} has {key}={current!r}. " + _EDITED)


def _is_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)) or \
        (isinstance(value, torch.Tensor) and value.numel() == 1 and (value.is_floating_point() or not value.is_complex()))


def _numeric_problem(value: Any, current: Any, key: str) -> str | None:
    """What is wrong with a saved setting whose value in this run is ``current`` (None: nothing)."""
    if isinstance(current, bool):
        return None if isinstance(value, bool) else "True or False, as in this run's optimizer"
    if _is_number(current):
        if not _is_number(value):
            return "a number, as in this run's optimizer"
        number = float(value)
        if not math.isfinite(number):
            return "a finite number"
        if key in _NON_NEGATIVE and number < 0:
            return "a number >= 0"
        return None
    if isinstance(current, (tuple, list)) and current and all(_is_number(c) for c in current):
        if not isinstance(value, (tuple, list)) or len(value) != len(current) or \
                not all(_is_number(v) and math.isfinite(float(v)) for v in value):
            return f"{len(current)} finite numbers, as in this run's optimizer"
    return None


def check_position(ckpt: dict[str, Any], path: str, num_batches: int | None, loader: Any, world_size: int) -> None:
    """The checkpoint's place in its epoch (``loops.batch_idx``) against the batches an epoch of this run
    has (``num_batches``, after limits; None: the loader has no length, nothing to check). Saved by
    another number of processes, against the batches an epoch had there."""
    loops = ckpt["loops"]
    batch_idx = loops["batch_idx"]
    if not batch_idx or loops.get("epoch_trained") or num_batches is None:
        return
    saved_world = ckpt["metadata"].get("world_size", 1)
    origin = loops.get("epoch_order")
    if saved_world == world_size and origin is None:
        bound, where = num_batches, f"the {num_batches} batches in an epoch of this run"
    else:
        dataset: Any = getattr(loader, "dataset", None)  # any object: its len() is tried below
        batch_size = loops.get("train_batch_size") or getattr(loader, "batch_size", None)
        try:
            samples = len(dataset)
        except TypeError:
            return
        if not batch_size:
            return
        # An epoch re-dealt after a change of process count (``epoch_order``) counts its batches over runs of
        # different sizes: bound it by the most batches one process can have, on one process.
        world = 1 if origin is not None else saved_world
        bound = math.ceil(math.ceil(samples / world) / batch_size)
        where = (f"the {bound} batches per process an epoch of its {samples} samples has on {world} process(es) "
                 f"with batch_size {batch_size}")
    if batch_idx > bound:
        raise _fail(path, "loops.batch_idx", batch_idx, f"at most {bound}, {where}",
                    "If the data or limit_train_batches changed since it was saved, resume from a checkpoint taken at "
                    "an epoch end (or with the data it was saved with). " + _EDITED)
