"""``Accelerator.save_state`` / ``load_state``: the same content as a Trainer checkpoint, for the
objects a hand-written loop ``prepare()``d and those registered with ``register_for_checkpointing``.

Layout: ``<dir>/state.ckpt`` (one file, loaded with ``weights_only=True``). The directory is
written under a temporary name and renamed into place, so ``<dir>`` is always whole.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from trainer.strategies.checkpoint_io import (CheckpointError, _fsync_dir, atomic_save, clean_temporaries, new_directory,
                                              recover_swaps, safe_load, swap_directory)
from trainer.persistence.trainer_state import FORMAT_VERSION, load_weights_into, read_verified
from trainer.data_position import rng_states, set_rng_states

STATE_FILE = "state.ckpt"


def save_state(accelerator: Any, output_dir: str) -> str:
    from trainer import __version__

    strategy = accelerator.strategy
    sharded = strategy.sharded_format
    state = {
        "format_version": FORMAT_VERSION,
        "metadata": {"trainer_version": __version__, "torch_version": str(torch.__version__),
                     "world_size": strategy.world_size, "strategy": type(strategy).__name__,
                     "precision": strategy.precision.name},
        # sharded strategies write these as shards (below), not as one file
        "models": [] if sharded else [accelerator.unwrap_model(m).state_dict() for m in accelerator._models],
        "optimizers": [] if sharded else [o.state_dict() for o in accelerator._optimizers],
        "schedulers": [s.scheduler.state_dict() for s in accelerator._schedulers],
        "precision": strategy.precision.state_dict(),
        "custom": [obj.state_dict() for obj in accelerator._custom_objects],
        "step": accelerator.step,
        "rng": dict(enumerate(strategy.all_gather_object(rng_states()))),  # every rank's (rank zero writes)
    }
    output_dir = os.path.abspath(output_dir)
    if strategy.sharded_format:
        _save_sharded(accelerator, state, output_dir)
        return output_dir
    if strategy.is_global_zero:
        _write_dir_atomically(output_dir, lambda tmp: atomic_save(state, os.path.join(tmp, STATE_FILE)))
    strategy.barrier("save_state")
    return output_dir


def _sharded_objects(accelerator: Any) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
    """The one prepared model and its optimizers, whose state the strategy writes as shards."""
    if len(accelerator._models) != 1:
        raise CheckpointError(f"save_state/load_state with {type(accelerator.strategy).__name__} supports one prepared "
                              f"model (its optimizers are saved with it); this Accelerator has "
                              f"{len(accelerator._models)}. Save each model's get_state_dict() yourself.")
    return accelerator.unwrap_model(accelerator._models[0]), [o.optimizer for o in accelerator._optimizers]


def _save_sharded(accelerator: Any, state: dict[str, Any], output_dir: str) -> None:
    """The strategy's own shards of the model and optimizers, and the rest as meta.ckpt."""
    strategy = accelerator.strategy
    model, optimizers = _sharded_objects(accelerator)
    meta = {k: v for k, v in state.items() if k not in ("models", "optimizers")}
    meta.update({"models": 1, "optimizers": len(optimizers), "optimizer_states": "sharded"})
    strategy.save_sharded(meta, output_dir, model, optimizers)


def _load_sharded(accelerator: Any, input_dir: str, meta: dict[str, Any]) -> None:
    strategy = accelerator.strategy
    if meta.get("sharded") != strategy.sharded_format:
        raise CheckpointError(f"Accelerator.load_state({input_dir!r}): saved by {meta['metadata'].get('strategy')} "
                              f"as {meta.get('sharded') or 'one file'}; this Accelerator uses "
                              f"{type(strategy).__name__}. Load it with the strategy that saved it.")
    model, optimizers = _sharded_objects(accelerator)
    strategy.load_sharded(input_dir, model, optimizers)


def _write_dir_atomically(output_dir: str, fill: Any) -> None:
    """``fill(tmp)`` a new directory and swap it in (see ``swap_directory``): ``output_dir`` is the
    old state or the new one, whole, even after a kill; ``_recover`` finishes an interrupted swap."""
    _recover(output_dir)
    tmp = new_directory(output_dir)
    try:
        fill(tmp)
        _fsync_dir(tmp)
        swap_directory(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _recover(output_dir: str) -> None:
    """A swap of ``output_dir`` cut short by a kill is finished; dead writers' temporaries removed."""
    parent, name = os.path.split(os.path.abspath(output_dir))
    if os.path.isdir(parent):
        recover_swaps(parent, only=name)
        clean_temporaries(parent, only=name)


def load_state(accelerator: Any, input_dir: str, strict: bool = True) -> None:
    from trainer.strategies.checkpoint_io import SHARDED_META

    path = os.path.join(input_dir, STATE_FILE)
    if accelerator.strategy.is_global_zero:
        _recover(input_dir)
    accelerator.strategy.barrier("load_state")
    if os.path.isfile(input_dir):
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): that is a file; expected the directory "
                                "save_state wrote (it holds state.ckpt). A Trainer checkpoint file resumes with "
                                "trainer.fit(..., ckpt_path=path).")
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): no such directory. Pass the directory "
                                "given to save_state.")
    sharded = os.path.isfile(os.path.join(input_dir, SHARDED_META))
    if sharded or accelerator.strategy.sharded_format:
        # the directory's meta.ckpt (refused if the directory is partial), every file checked
        meta = read_verified(accelerator.strategy, input_dir)
        _load_sharded(accelerator, input_dir, meta)
        _load_rest(accelerator, meta, input_dir)
        return
    if not os.path.isfile(path):
        from trainer.checkpoint_kinds import describe_directory

        found, fix = describe_directory(input_dir) or ("nothing", "")
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): it holds no {STATE_FILE}: found {found}; "
                                f"expected the directory Accelerator.save_state wrote. {fix}")
    state = safe_load(path)
    _check_state(state, path)
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
    _load_rest(accelerator, state, path)


_STATE_KEYS = ("models", "optimizers", "schedulers", "precision", "custom", "step", "rng")


def _check_state(state: Any, path: str) -> None:
    """Refuse a ``state.ckpt`` that is not what save_state writes, naming what it is instead."""
    from trainer.checkpoint_kinds import describe

    if isinstance(state, dict) and "format_version" in state and all(k in state for k in _STATE_KEYS):
        return
    if isinstance(state, dict) and "format_version" in state and "models" in state:
        missing = [k for k in _STATE_KEYS if k not in state]
        raise CheckpointError(f"{path!r} is an Accelerator state without {', '.join(missing)}; expected every field "
                              "save_state writes. It was edited or cut short: save the state again.")
    found, fix = describe(state, path)
    raise CheckpointError(f"{path!r} holds {found}; expected the state.ckpt that Accelerator.save_state writes. {fix}")


def _load_rest(accelerator: Any, state: dict[str, Any], path: str) -> None:
    for sched, sd in zip(accelerator._schedulers, state["schedulers"]):
        sched.scheduler.load_state_dict(sd)
    for obj, sd in zip(accelerator._custom_objects, state["custom"]):
        obj.load_state_dict(sd)
    accelerator.strategy.precision.load_state_dict(state["precision"])
    accelerator.step = state["step"]
    rng = state["rng"].get(accelerator.strategy.global_rank)
    if rng is not None:
        set_rng_states(rng)
