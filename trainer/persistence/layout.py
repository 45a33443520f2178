"""The layout of a single-file Trainer checkpoint, checked field by field before anything is restored.

A file that ``safe_load`` accepted holds only plain containers and tensors, but nothing says they
are the ones a checkpoint has: an edited or hand-made file (``format_version: "1"``, no ``loops``,
``metadata: "x"``, junk in ``rng``, a negative step) used to reach the restore code and fail there
with a bare ``TypeError``/``KeyError``. ``check_layout`` walks the layout first and raises
``MalformedCheckpointError`` naming the first wrong field, what it holds and what was expected.

It is a ``CorruptCheckpointError``: ``fit(ckpt_path="last")`` passes over such a file to the
newest whole one, like a truncated file; an explicit path raises it. Nothing is modified.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from trainer.strategies.checkpoint_io import CorruptCheckpointError

# 2: the Accelerator's save_state writes the Trainer's names (format 1 files of both doors still load)
FORMAT_VERSION = 2

_FIX = ("Checkpoints are written by Trainer.save_checkpoint / ModelCheckpoint; this file was edited or made by "
        "other code. Resume from another checkpoint, or load plain weights with "
        "TrainModule.load_state_dict(torch.load(path, weights_only=True)).")


class MalformedCheckpointError(CorruptCheckpointError):
    """A checkpoint whose fields are not those this library writes (the first wrong field is named)."""


def _shown(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


class _Check:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, field: str, value: Any, expected: str) -> None:
        raise MalformedCheckpointError(
            f"{self.path!r} is not a valid checkpoint: field {field!r} holds {_shown(value)}; expected {expected}. "
            + _FIX)

    def get(self, mapping: dict, key: str, field: str) -> Any:
        if key not in mapping:
            raise MalformedCheckpointError(f"{self.path!r} is not a valid checkpoint: field {field!r} is missing. "
                                           + _FIX)
        return mapping[key]

    def count(self, value: Any, field: str) -> None:
        if type(value) is not int or value < 0:  # bool is not a count
            self.fail(field, value, "a whole number >= 0")

    def flag(self, value: Any, field: str) -> None:
        if not isinstance(value, bool):
            self.fail(field, value, "True or False")

    def mapping(self, value: Any, field: str, keys: type | None = str) -> dict:
        if not isinstance(value, dict):
            self.fail(field, value, "a dict")
        if keys is not None:
            for key in value:
                if not isinstance(key, keys):
                    self.fail(f"{field} key", key, f"{keys.__name__} keys")
        return value

    def sequence(self, value: Any, field: str, item: Callable[[Any, str], Any] | None = None) -> list:
        if not isinstance(value, (list, tuple)):
            self.fail(field, value, "a list")
        for i, entry in enumerate(value):
            if item is not None:
                item(entry, f"{field}[{i}]")
        return list(value)

    def tensor(self, value: Any, field: str, dtype: torch.dtype | None = None) -> None:
        if not isinstance(value, torch.Tensor) or (dtype is not None and value.dtype != dtype):
            self.fail(field, value, f"a {dtype or ''} tensor".replace("  ", " "))

    def rng(self, value: Any, field: str) -> None:
        """One process's generators, as ``data_position.rng_states`` records them."""
        states = self.mapping(value, field)
        python = self.get(states, "python", f"{field}.python")
        if (not isinstance(python, (list, tuple)) or len(python) != 3 or type(python[0]) is not int
                or not isinstance(python[1], (list, tuple)) or len(python[1]) != 625
                or not all(type(x) is int for x in python[1]) or not (python[2] is None or isinstance(python[2], float))):
            self.fail(f"{field}.python", python, "random.getstate() as [version, 625 ints, gauss]")
        self.tensor(self.get(states, "torch", f"{field}.torch"), f"{field}.torch", torch.uint8)
        if "numpy" in states:
            numpy = states["numpy"]
            if (not isinstance(numpy, (list, tuple)) or len(numpy) != 5 or not isinstance(numpy[0], str)
                    or not isinstance(numpy[1], torch.Tensor) or numpy[1].numel() != 624):
                self.fail(f"{field}.numpy", numpy, "numpy.random.get_state() as [kind, 624-int tensor, pos, "
                                                    "has_gauss, cached]")
        if "cuda" in states:
            self.sequence(states["cuda"], f"{field}.cuda", lambda t, f: self.tensor(t, f, torch.uint8))


_LOOP_COUNTS = ("global_step", "current_epoch", "batch_idx", "batches_seen", "samples_seen")
_LOOP_FLAGS = ("should_stop", "val_pending")


def check_layout(ckpt: Any, path: str) -> None:
    """Raise ``MalformedCheckpointError`` at the first field that is not what this library writes.

    Checks what every door reads (format_version, metadata, state_dict, hparams, counters) and,
    in a checkpoint that can resume (it has ``optimizer_states``), everything ``restore`` reads.
    A file of a newer ``format_version`` is left to ``check_compatible``'s upgrade message."""
    c = _Check(path)
    c.mapping(ckpt, "<top level>", keys=None)
    version = c.get(ckpt, "format_version", "format_version")
    if type(version) is not int or version < 1:
        c.fail("format_version", version, f"a whole number >= 1 (this version writes {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        return
    metadata = c.mapping(c.get(ckpt, "metadata", "metadata"), "metadata")
    if "world_size" in metadata and (type(metadata["world_size"]) is not int or metadata["world_size"] < 1):
        c.fail("metadata.world_size", metadata["world_size"], "a whole number >= 1")
    for key in ("strategy", "trainer_version", "module"):
        if key in metadata and not isinstance(metadata[key], str):
            c.fail(f"metadata.{key}", metadata[key], "a string")
    sharded = ckpt.get("sharded")
    if sharded is not None and not isinstance(sharded, str):
        c.fail("sharded", sharded, "the name of a sharded format (a string)")
    # a sharded checkpoint's meta.ckpt has no state_dict: its weights lie in the shards beside it
    weights = c.mapping(ckpt["state_dict"] if sharded and "state_dict" in ckpt else {} if sharded
                        else c.get(ckpt, "state_dict", "state_dict"), "state_dict")
    for name, value in weights.items():
        if not isinstance(value, torch.Tensor):
            c.fail(f"state_dict[{name!r}]", value, "a tensor")
    if "hparams" in ckpt:
        c.mapping(ckpt["hparams"], "hparams")
    for key in ("global_step", "epoch"):
        if key in ckpt:
            c.count(ckpt[key], key)
    if "optimizer_states" not in ckpt:
        return  # weights only: restore says it cannot resume; load_from_checkpoint needs no more
    optimizers = ckpt["optimizer_states"]
    if sharded:
        if optimizers != "sharded":
            c.fail("optimizer_states", optimizers, "'sharded' (the optimizer state lies in the shards)")
    else:
        c.sequence(optimizers, "optimizer_states", lambda s, f: c.mapping(s, f, keys=None))
    c.sequence(c.get(ckpt, "lr_schedulers", "lr_schedulers"), "lr_schedulers", lambda s, f: c.mapping(s, f, keys=None))
    if "precision" in ckpt:
        c.mapping(ckpt["precision"], "precision")
    if "accelerator" in ckpt:  # Accelerator.save_state: its own entry instead of the loop's
        _check_accelerator(c, c.mapping(ckpt["accelerator"], "accelerator"))
    else:
        _check_loops(c, c.mapping(c.get(ckpt, "loops", "loops"), "loops"))
    rng = c.mapping(ckpt.get("rng", {}), "rng", keys=int)
    for rank, states in rng.items():
        c.rng(states, f"rng[{rank}]")
    callbacks = c.mapping(ckpt.get("callbacks", {}), "callbacks")
    for key, state in callbacks.items():
        c.mapping(state, f"callbacks[{key!r}]", keys=None)
    if "datamodule" in ckpt:
        c.mapping(ckpt["datamodule"], "datamodule", keys=None)


def _check_loops(c: _Check, loops: dict) -> None:
    for key in _LOOP_COUNTS:
        c.count(c.get(loops, key, f"loops.{key}"), f"loops.{key}")
    for key in _LOOP_FLAGS:
        c.flag(c.get(loops, key, f"loops.{key}"), f"loops.{key}")
    if "epoch_trained" in loops:
        c.flag(loops["epoch_trained"], "loops.epoch_trained")
    if loops.get("train_shuffle") is not None:  # the training data's distributed sampler shuffled (or not)
        c.flag(loops["train_shuffle"], "loops.train_shuffle")
    start = loops.get("epoch_start_rng")
    if start is not None:
        c.mapping(start, "loops.epoch_start_rng")
        c.tensor(c.get(start, "torch", "loops.epoch_start_rng.torch"), "loops.epoch_start_rng.torch", torch.uint8)
        c.sequence(c.get(start, "generators", "loops.epoch_start_rng.generators"), "loops.epoch_start_rng.generators",
                   lambda t, f: c.tensor(t, f, torch.uint8))
    if loops.get("train_batch_size") is not None:
        c.count(loops["train_batch_size"], "loops.train_batch_size")
    if "epoch_order" in loops:  # a re-dealt epoch's origin (reshard.py)
        origin = c.mapping(loops["epoch_order"], "loops.epoch_order")
        for key in ("world_size", "batch_size", "seed", "consumed"):
            c.count(c.get(origin, key, f"loops.epoch_order.{key}"), f"loops.epoch_order.{key}")
    for key in ("results", "callback_metrics"):
        if key in loops:
            c.mapping(loops[key], f"loops.{key}")


def _check_accelerator(c: _Check, own: dict) -> None:
    for key in ("num_models", "num_optimizers", "step"):
        c.count(c.get(own, key, f"accelerator.{key}"), f"accelerator.{key}")
    c.sequence(c.get(own, "models", "accelerator.models"), "accelerator.models",
               lambda s, f: c.mapping(s, f))
    c.sequence(c.get(own, "custom", "accelerator.custom"), "accelerator.custom",
               lambda s, f: c.mapping(s, f, keys=None))
    if "dataloaders" in own:  # absent from states saved before loaders were
        for rank, loaders in c.mapping(own["dataloaders"], "accelerator.dataloaders", keys=int).items():
            c.sequence(loaders, f"accelerator.dataloaders.{rank}", lambda s, f: _check_loader(c, s, f))


def _check_loader(c: _Check, state: Any, field: str) -> None:
    state = c.mapping(state, field)
    c.count(c.get(state, "epoch", f"{field}.epoch"), f"{field}.epoch")
    c.flag(c.get(state, "in_pass", f"{field}.in_pass"), f"{field}.in_pass")
    if not state["in_pass"] and "generators" in state:  # absent from states saved before it was kept
        c.sequence(state["generators"], f"{field}.generators", lambda t, f: c.tensor(t, f, torch.uint8))
    if state["in_pass"]:
        start = c.mapping(c.get(state, "epoch_start", f"{field}.epoch_start"), f"{field}.epoch_start")
        c.tensor(c.get(start, "torch", f"{field}.epoch_start.torch"), f"{field}.epoch_start.torch", torch.uint8)
        c.sequence(c.get(start, "generators", f"{field}.epoch_start.generators"), f"{field}.epoch_start.generators",
                   lambda t, f: c.tensor(t, f, torch.uint8))
    # DataLoaderConfiguration(use_stateful_dataloader=True): the position in the pass (wrappers.PreparedDataLoader)
    if "stateful" in state:
        c.flag(state["stateful"], f"{field}.stateful")
    if "batches" in state:
        c.count(state["batches"], f"{field}.batches")
    if "position" in state:
        c.mapping(state["position"], f"{field}.position", keys=None)
    if "stream_rest" in state:
        rest = c.mapping(state["stream_rest"], f"{field}.stream_rest")
        consumed = c.mapping(c.get(rest, "consumed", f"{field}.stream_rest.consumed"), f"{field}.stream_rest.consumed")
        for name, ranges in consumed.items():
            c.sequence(ranges, f"{field}.stream_rest.consumed.{name}",
                       lambda r, f: c.sequence(r, f) if len(r) == 2 and all(type(x) is int for x in r)
                       else c.fail(f, r, "[start, stop]"))
