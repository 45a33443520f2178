"""``Accelerator.save_state`` / ``load_state``: the Trainer's checkpoint format, for the objects a
hand-written loop ``prepare()``d and those registered with ``register_for_checkpointing``.

The state is a Trainer checkpoint (``trainer_state.py``) plus one entry of its own:

    format_version, metadata   as the Trainer writes them
    state_dict                 the first prepared model's weights ({} when sharded)
    optimizer_states           every prepared optimizer's state ("sharded": in the shards)
    lr_schedulers, precision, rng
    accelerator                {"num_models", "num_optimizers", "models": the weights of the second
                                and later models, "custom": the registered objects' states, "step"}

Layout: the strategy's checkpoint format decides (``strategy.checkpoint_format.write_state``):
``<dir>/state.ckpt`` in one file; with a sharded format ``<dir>`` is the format's directory of shards
with ``meta.ckpt``, as a Trainer checkpoint of that strategy. Both are written by the one atomic directory writer (``atomic_directory``): the
directory is filled under a temporary name and swapped into place, so ``<dir>`` is always whole.
Format-1 states (``models``/``optimizers``/``schedulers``/``custom``/``step`` at the top) still load.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import IterableDataset

from trainer.data.data_position import rng_states, set_rng_states
from trainer.persistence.layout import check_layout
from trainer.persistence.trainer_checkpoint import FORMAT_VERSION, _paths_as_text, header, load_weights_into, read_verified
from trainer.strategies.checkpoint_directories import recover_directory
from trainer.strategies.checkpoint_format import STATE_FILE
from trainer.strategies.checkpoint_io import CheckpointError, safe_load
from trainer.strategies.checkpoint_links import file_in


def save_state(accelerator: Any, output_dir: str) -> str:
    strategy = accelerator.strategy
    fmt = strategy.checkpoint_format  # which state the header holds and which its files (shards)
    models = [fmt.module_state(accelerator.unwrap_model(m)) for m in accelerator.prepared.models]
    state = {
        **header(strategy),
        "state_dict": models[0] if models else {},
        "optimizer_states": fmt.optimizer_states(accelerator.prepared.optimizers),
        "lr_schedulers": [s.scheduler.state_dict() for s in accelerator.prepared.schedulers],
        "precision": strategy.precision.state_dict(),
        "rng": dict(enumerate(strategy.all_gather_object(rng_states()))),  # every rank's
        "accelerator": {"num_models": len(accelerator.prepared.models),
                        "num_optimizers": len(accelerator.prepared.optimizers),
                        "models": models[1:],
                        "custom": [obj.state_dict() for obj in accelerator.prepared.custom_objects],
                        "step": accelerator.step,
                        # every rank's: each prepared loader's epoch and the start states of its pass
                        "dataloaders": dict(enumerate(strategy.all_gather_object(
                            [loader.state_dict() for loader in accelerator.prepared.dataloaders])))},
    }
    state = _paths_as_text(state)  # a Path in a registered object's state: its text (loads with weights_only)
    output_dir = os.path.abspath(output_dir)
    fmt.write_state(state, output_dir, _AcceleratorObjects(accelerator, state, output_dir))
    return output_dir


class _AcceleratorObjects:
    """The Accelerator's prepared objects, lent to the checkpoint format that writes or reads them
    (``CheckpointObjects``): how a one-file state's models and optimizer states go back in."""

    def __init__(self, accelerator: Any, state: dict[str, Any], path: str, strict: bool = True) -> None:
        self.accelerator, self.state, self.path, self.strict = accelerator, state, path, strict

    def shard_objects(self) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
        return _sharded_objects(self.accelerator)

    def weights(self) -> None:
        accelerator, state = self.accelerator, self.state
        weights = [state["state_dict"], *state["accelerator"]["models"]][:len(accelerator.prepared.models)]
        for model, sd in zip(accelerator.prepared.models, weights):
            load_weights_into(accelerator.unwrap_model(model), sd, self.path, strict=self.strict)

    def loaded(self) -> None:
        return None

    def optimizer_states(self) -> None:
        for opt, sd in zip(self.accelerator.prepared.optimizers, self.state["optimizer_states"]):
            opt.load_state_dict(sd)
            self.accelerator.strategy.setup_optimizer(opt.optimizer)


def _sharded_objects(accelerator: Any) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
    """The one prepared model and its optimizers, whose state the strategy writes as shards."""
    if len(accelerator.prepared.models) != 1:
        raise CheckpointError(f"save_state/load_state with {type(accelerator.strategy).__name__} supports one prepared "
                              f"model (its optimizers are saved with it); this Accelerator has "
                              f"{len(accelerator.prepared.models)}. Save each model's get_state_dict() yourself.")
    prepared = accelerator.prepared
    return accelerator.unwrap_model(prepared.models[0]), [o.optimizer for o in prepared.optimizers]


def load_state(accelerator: Any, input_dir: str, strict: bool = True) -> None:
    strategy = accelerator.strategy
    if strategy.is_global_zero:
        recover_directory(input_dir)
    strategy.barrier("load_state")
    if os.path.isfile(input_dir):
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): that is a file; expected the directory "
                                "save_state wrote (it holds state.ckpt). A Trainer checkpoint file resumes with "
                                "trainer.fit(..., ckpt_path=path).")
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): no such directory. Pass the directory "
                                "given to save_state.")
    fmt = strategy.checkpoint_format
    path = fmt.state_header(input_dir)  # state.ckpt, or the directory of shards with its meta.ckpt
    if path != input_dir and not os.path.isfile(path):
        from trainer.persistence.kinds import describe_directory

        found, fix = describe_directory(input_dir) or ("nothing", "")
        raise FileNotFoundError(f"Accelerator.load_state({input_dir!r}): it holds no {STATE_FILE}: found {found}; "
                                f"expected the directory Accelerator.save_state wrote. {fix}")
    # a sharded directory's meta.ckpt (refused if the directory is partial), every file checked
    # one file: state.ckpt where it really is (a link out of the directory is refused, checkpoint_links.py)
    state = read_verified(strategy, input_dir) if path == input_dir else safe_load(file_in(input_dir, STATE_FILE))
    _check_state(state, path)
    state = _upgrade(state, path)
    check_layout(state, path)  # every field this reads, named when wrong
    _check_counts(accelerator, state, input_dir)
    # a stateful loader's rest dealt over this run's processes, or refused with the reason, before anything loads
    rests = _plan_rests(accelerator, state, input_dir)
    if not fmt.wrote(state):
        raise CheckpointError(f"Accelerator.load_state({input_dir!r}): saved by {state['metadata'].get('strategy')} "
                              f"as {state.get('sharded') or 'one file'}; this Accelerator uses "
                              f"{type(strategy).__name__}. Load it with the strategy that saved it.")
    fmt.read(path, state, _AcceleratorObjects(accelerator, state, path, strict))
    for sched, sd in zip(accelerator.prepared.schedulers, state["lr_schedulers"]):
        sched.scheduler.load_state_dict(sd)
    for obj, sd in zip(accelerator.prepared.custom_objects, state["accelerator"]["custom"]):
        obj.load_state_dict(sd)
    strategy.precision.load_state_dict(state["precision"])
    accelerator.step = state["accelerator"]["step"]
    _load_dataloaders(accelerator, state["accelerator"].get("dataloaders", {}), strategy.global_rank, rests)
    rng = state["rng"].get(strategy.global_rank)
    if rng is not None:
        set_rng_states(rng)


def _load_dataloaders(accelerator: Any, saved: dict[int, list[dict[str, Any]]], rank: int,
                      rests: dict[int, tuple[int, Any]]) -> None:
    """Each prepared loader's epoch (and pass start, and a stateful loader's position) as saved, matched by
    the order of ``prepare``; a stateful loader saved inside a pass by another number of processes reads the
    rest of that pass dealt over this run's (``rests``: ``_plan_rests``). Another world size otherwise: rank
    zero's epochs, without start states (the shards' order is new anyway); a state from before loaders were
    saved, or a loader prepared beyond the saved ones: unchanged."""
    own = saved.get(rank)
    if own is None and 0 in saved:
        own = [{"epoch": s["epoch"], "in_pass": False} for s in saved[0]]
    for i, (loader, loader_state) in enumerate(zip(accelerator.prepared.dataloaders, own or [])):
        if i not in rests:
            loader.load_state_dict(loader_state)
            continue
        epoch, rest = rests[i]
        if rest is None:  # nothing of the pass remains: the next pass is the next epoch's
            loader.load_state_dict({"epoch": epoch + 1, "in_pass": False})
        else:
            loader.load_rest(epoch, rest)


def _plan_rests(accelerator: Any, state: dict[str, Any], input_dir: str) -> dict[int, tuple[int, Any]]:
    """For each stateful prepared loader whose saved pass must be re-dealt -- saved inside it by another number
    of processes, or inside a rest re-dealt before -- its epoch and this rank's part of the rest (None: nothing
    remains). Raises, naming the reason and the fix, where the dataset does not say how it is sharded."""
    from trainer.data.reshard import deal
    from trainer.data.sharded_stream import StreamRest, check_stream_loader, say_redealt, untrained

    saved = state["accelerator"].get("dataloaders", {})
    saved_world, world = state["metadata"].get("world_size", 1), accelerator.num_processes
    rank = accelerator.process_index
    plans: dict[int, tuple[int, Any]] = {}
    for i, loader in enumerate(accelerator.prepared.dataloaders):
        states = {r: s[i] for r, s in saved.items() if i < len(s)}
        inside = {r: s for r, s in states.items() if s.get("stateful") and s.get("in_pass")}
        if not inside or not (saved_world != world or any("stream_rest" in s for s in inside.values())):
            continue
        first = inside[min(inside)]
        epoch = first["epoch"]
        inner = loader.loader
        try:
            if not loader.stateful:
                raise CheckpointError("this run prepared it without DataLoaderConfiguration(use_stateful_dataloader="
                                      "True), so it cannot read the rest")
            if not isinstance(getattr(inner, "dataset", None), IterableDataset):
                raise CheckpointError(
                    f"the rest of the epoch cannot be re-dealt: it reads a map-style "
                    f"{type(getattr(inner, 'dataset', inner)).__name__}, whose position is the batches each process "
                    "was dealt (another number of processes is dealt other batches)")
            kind = check_stream_loader(inner)
            rest_state = first.get("stream_rest")
            # a rank whose own pass was over holds no position: it trained every shard it was dealt
            pending = {"consumed": None if rest_state is None else rest_state["consumed"], "saved_world": saved_world,
                       "positions": {r: s.get("position") for r, s in states.items() if s.get("position") is not None}}
            sizes, consumed, rest = untrained(inner, pending, kind)
            steps = deal(rest, world, inner.batch_size) if rest else []
        except CheckpointError as err:
            raise CheckpointError(
                f"Accelerator.load_state({input_dir!r}): prepared dataloader {i} was saved inside a pass (epoch "
                f"{epoch}, {first.get('batches', 0)} batch(es) in) with its position on each of {saved_world} "
                f"process(es); this run has {world}, and {err}. Or load it with {saved_world} process(es), or save "
                "the state at the end of a pass.") from None
        done = sum(stop - start for ranges in consumed.values() for start, stop in ranges)
        if rest:
            say_redealt(kind, sizes, rest, done, saved_world, world, len(steps), inner.batch_size,
                        f"pass {epoch} of prepared dataloader {i}")
        plans[i] = (epoch, StreamRest(consumed, steps, rank, accelerator.gradient_accumulation_steps, epoch, 0)
                    if rest else None)
    return plans


def _check_counts(accelerator: Any, state: dict[str, Any], input_dir: str) -> None:
    own = state["accelerator"]
    counts = {"models": (own["num_models"], len(accelerator.prepared.models)),
              "optimizers": (own["num_optimizers"], len(accelerator.prepared.optimizers)),
              "schedulers": (len(state["lr_schedulers"]), len(accelerator.prepared.schedulers)),
              "custom": (len(own["custom"]), len(accelerator.prepared.custom_objects))}
    for key, (saved, have) in counts.items():
        if saved != have:
            raise CheckpointError(
                f"Accelerator.load_state({input_dir!r}): the state holds {saved} {key} but this Accelerator has "
                f"{have} prepared/registered. prepare() (and register_for_checkpointing()) the same objects, in the "
                "same order, as when it was saved.")


_V1_KEYS = ("models", "optimizers", "schedulers", "precision", "custom", "step", "rng")


def _check_state(state: Any, path: str) -> None:
    """Refuse a state that is not what save_state writes (either format), naming what it is instead."""
    from trainer.persistence.kinds import describe

    if isinstance(state, dict) and "format_version" in state:
        if "accelerator" in state or all(k in state for k in _V1_KEYS):
            return
        if "models" in state:
            missing = [k for k in _V1_KEYS if k not in state]
            raise CheckpointError(f"{path!r} is an Accelerator state without {', '.join(missing)}; expected every "
                                  "field save_state writes. It was edited or cut short: save the state again.")
    found, fix = describe(state, path)
    raise CheckpointError(f"{path!r} holds {found}; expected the state.ckpt that Accelerator.save_state writes. {fix}")


def _upgrade(state: dict[str, Any], path: str) -> dict[str, Any]:
    """A format-1 state in today's layout; a newer format is refused with the fix."""
    version = state.get("format_version", 0) if isinstance(state, dict) else 0
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has format {version}, newer than {FORMAT_VERSION}; upgrade the trainer "
                              "package to load it.")
    if "accelerator" in state:
        return state
    models, optimizers = state.get("models", []), state.get("optimizers", [])
    sharded = state.get("optimizer_states") == "sharded"  # format 1 wrote counts, not states, when sharded
    rest = {k: v for k, v in state.items() if k not in ("models", "optimizers", "schedulers", "custom", "step")}
    return {**rest, "state_dict": {} if sharded or not models else models[0],
            "optimizer_states": "sharded" if sharded else optimizers, "lr_schedulers": state.get("schedulers", []),
            "accelerator": {"num_models": models if sharded else len(models),
                            "num_optimizers": optimizers if sharded else len(optimizers),
                            "models": [] if sharded else models[1:], "custom": state.get("custom", []),
                            "step": state.get("step", 0)}}
