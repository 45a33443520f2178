"""``Accelerator.save_state`` / ``load_state``: the same content as a Trainer checkpoint, for the
objects a hand-written loop ``prepare()``d and those registered with ``register_for_checkpointing``.

Layout: ``<dir>/state.ckpt`` (one file, loaded with ``weights_only=True``). The directory is
written under a temporary name and renamed into place, so ``<dir>`` is always whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import torch

from strategies.checkpoint_io import CheckpointError, _fsync_dir, atomic_save, safe_load
from trainer.checkpoint import FORMAT_VERSION, load_weights_into
from trainer.data_position import rng_states, set_rng_states

STATE_FILE = "state.ckpt"


def save_state(accelerator: Any, output_dir: str) -> str:
    from trainer import __version__

    strategy = accelerator.strategy
    state = {
        "format_version": FORMAT_VERSION,
        "metadata": {"trainer_version": __version__, "torch_version": str(torch.__version__),
                     "world_size": strategy.world_size, "strategy": type(strategy).__name__,
                     "precision": strategy.precision.name},
        "models": [accelerator.unwrap_model(m).state_dict() for m in accelerator._models],
        "optimizers": [o.state_dict() for o in accelerator._optimizers],
        "schedulers": [s.scheduler.state_dict() for s in accelerator._schedulers],
        "precision": strategy.precision.state_dict(),
        "custom": [obj.state_dict() for obj in accelerator._custom_objects],
        "step": accelerator.step,
        "rng": {strategy.global_rank: rng_states()},
    }
    output_dir = os.path.abspath(output_dir)
    if strategy.is_global_zero:
        _write_dir_atomically(output_dir, lambda tmp: atomic_save(state, os.path.join(tmp, STATE_FILE)))
    strategy.barrier("save_state")
    return output_dir


def _write_dir_atomically(output_dir: str, fill: Any) -> None:
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(output_dir)}.", dir=parent)
    try:
        fill(tmp)
        old = None
        if os.path.exists(output_dir):  # keep the previous state whole until the new one is in place
            old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(output_dir)}.", dir=parent)
            os.rmdir(old)
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(accelerator: Any, input_dir: str, strict: bool = True) -> None:
    path = os.path.join(input_dir, STATE_FILE)
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): no such directory. Pass the directory "
                                "given to save_state.")
    state = safe_load(path)
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has format {state['format_version']}, newer than {FORMAT_VERSION}; "
                              "upgrade the trainer package to load it.")
    counts = {"models": len(accelerator._models), "optimizers": len(accelerator._optimizers),
              "schedulers": len(accelerator._schedulers), "custom": len(accelerator._custom_objects)}
    for key, have in counts.items():
        if len(state[key]) != have:
            raise CheckpointError(
                f"Accelerator.load_state({input_dir!r}): the state holds {len(state[key])} {key} but this "
                f"Accelerator has {have} prepared/registered. prepare() (and register_for_checkpointing()) the same "
                "objects, in the same order, as when it was saved.")
    for model, sd in zip(accelerator._models, state["models"]):
        load_weights_into(accelerator.unwrap_model(model), sd, path, strict=strict)
    for opt, sd in zip(accelerator._optimizers, state["optimizers"]):
        opt.load_state_dict(sd)
        accelerator.strategy.setup_optimizer(opt.optimizer)
    for sched, sd in zip(accelerator._schedulers, state["schedulers"]):
        sched.scheduler.load_state_dict(sd)
    for obj, sd in zip(accelerator._custom_objects, state["custom"]):
        obj.load_state_dict(sd)
    accelerator.strategy.precision.load_state_dict(state["precision"])
    accelerator.step = state["step"]
    rng = state["rng"].get(accelerator.strategy.global_rank)
    if rng is not None:
        set_rng_states(rng)
