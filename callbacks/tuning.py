"""What the tuner's two searches share (lr_finder.py: ``LearningRateFinder``, batch_size_finder.py:
``BatchSizeFinder``; ``trainer.tuner.Tuner`` drives both): a few training steps of their own -- never counted
in ``global_step``, never logged -- and a snapshot that puts the module's weights, the optimizer, the
precision's scaler and every RNG back as they were afterwards."""

from __future__ import annotations

import copy
import itertools
import random
from typing import Any, Iterator

import torch
from .view import TrainerView



class TunerExit(BaseException):
    """Ends the ``fit`` a ``Tuner`` started once its search is done (not an error)."""


# -- what a search trains on and leaves behind ---------------------------------------------------------------

class Snapshot:
    """The module's weights and buffers, the optimizers' states, the precision's scaler and the RNG states."""

    def __init__(self, trainer: TrainerView, module: torch.nn.Module) -> None:
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.optimizers = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
        self.precision = copy.deepcopy(trainer.strategy.precision.state_dict())
        self.rng = (torch.get_rng_state(), random.getstate(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, _numpy_state())

    def restore(self, trainer: TrainerView, module: torch.nn.Module) -> None:
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


def train_steps(trainer: TrainerView, module: Any, loader: Any, num_steps: int, synced: bool = True,
                before_step: Any = None) -> Iterator[torch.Tensor]:
    """Train up to ``num_steps`` steps of one batch each on ``loader`` with the fit's optimizer, through the
    step engine (precision, clipping aside), yielding each step's loss. ``synced=False``: no collective runs
    (each process trains alone: an out-of-memory error on one rank leaves no other waiting in an all-reduce).
    ``before_step(i)`` runs before each step (the range test sets the rate there)."""
    accel, optimizer = trainer.accelerator, trainer.optimizers[0]
    engine = accel.engine
    step_fn = trainer.fit_loop.training_step if synced else trainer.strategy.local_training_step(module)
    # The trial runs inside on_fit_start, where self.log is refused; its training_step logs as in fit.
    no_log_hook = module.refuse_logging(None)
    module.train()
    try:  # its own step count, one micro-batch per step; the fit's plan (and a fresh window) come back after
        with engine.planned(progress=_Counter(), accumulation=1, optimizers=[optimizer], count_every_step=False):
            for i, batch in enumerate(itertools.islice(loader, num_steps)):
                if before_step is not None:
                    before_step(i)
                batch = accel.batch_to_device(batch)
                engine.begin_micro(1, False)
                with accel.autocast():
                    output = step_fn(batch, i)
                loss, num_items = (output.get("loss"), output.get("num_items")) if isinstance(output, dict) \
                    else (output, None)
                if loss is None:
                    raise ValueError(f"training_step returned {type(output).__name__} without a loss at batch_idx {i} "
                                     "of the tuner's trial; it needs a loss tensor (or a dict with 'loss') to tune on.")
                engine.backward(engine.scale_loss(loss, num_items))
                engine.step(optimizer)
                engine.zero_grad(optimizer)
                yield loss.detach()
    finally:
        module.refuse_logging(no_log_hook)


def quiet_logging(module: Any) -> Any:
    """``self.log`` in the trial's training_step goes nowhere, without the "outside a stage" warning."""
    import warnings

    manager = warnings.catch_warnings()
    manager.__enter__()
    warnings.filterwarnings("ignore", message=r"self\.log\(")
    return manager


def attr_holders(trainer: TrainerView, module: Any, names: tuple[str, ...]) -> list[tuple[Any, str]]:
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


def set_attr(holders: list[tuple[Any, str]], value: Any) -> None:
    for holder, name in holders:
        if isinstance(holder, dict):
            holder[name] = value
        else:
            setattr(holder, name, value)
