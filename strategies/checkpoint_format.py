"""Checkpoint formats: how a strategy's checkpoints are written, copied aside for a background write,
read back, verified before anything in them is read, and merged into full weights offline.

A strategy returns its format object (``Strategy.checkpoint_format``); the Trainer, the Accelerator
and the callbacks call it and never ask which format it is. Every format class registers itself
under the ``name`` it records in a checkpoint's header (the ``sharded`` field; one file records
none), and code that holds only a checkpoint -- ``trainer merge-weights``, the verifier run before a
resume -- finds the class through that one registry (``recorded_format``). A strategy with a format
of its own subclasses ``CheckpointFormat`` (``ShardedFormat`` for a directory of per-rank files) and
returns it from its ``checkpoint_format``: nothing else changes.

    OneFileFormat    one file, written by rank zero (``Strategy.save_checkpoint``)
    DCPFormat        FSDP: torch.distributed.checkpoint shards, each rank writes its own ("fsdp-dcp")
    DeepSpeedFormat  DeepSpeed: the engine's own per-rank files ("deepspeed")

The format lives here, beside the atomic writers it uses, because ``strategies/`` imports nothing
of the Trainer's side (tests/packaging/test_import_graph.py); a door (the Trainer, the Accelerator)
hands a format its objects through ``CheckpointObjects``, with its own checks and messages.
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Protocol

import torch

from .checkpoint_io import SHARDED_META, CheckpointError, atomic_link, atomic_save, snapshot

__all__ = ["STATE_FILE", "CheckpointFormat", "CheckpointObjects", "DCPFormat", "DeepSpeedFormat", "OneFileFormat",
           "ShardedFormat", "format_named", "recorded_format", "registered_names", "verify_checkpoint"]

STATE_FILE = "state.ckpt"  # Accelerator.save_state's one file, inside its directory

_FORMATS: dict[str | None, type["CheckpointFormat"]] = {}  # the one registry: recorded name -> format class


class CheckpointObjects(Protocol):
    """What a door (the Trainer, the Accelerator) lends a format to read a checkpoint into: its objects,
    and how the state a one-file header holds goes into them (with the door's own checks)."""

    def shard_objects(self) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
        """The one module and its optimizers whose state a sharded format writes or reads."""
        ...

    def weights(self) -> None:
        """Put the header's weights into the module(s)."""
        ...

    def loaded(self) -> None:
        """The weights are in (the Trainer calls ``on_load_checkpoint`` here)."""
        ...

    def optimizer_states(self) -> None:
        """Put the header's optimizer states into the optimizers."""
        ...


class CheckpointFormat:
    """How one strategy's checkpoints are laid out on disk. The base is one file (``OneFileFormat``).

    Args:
        strategy: the ``Strategy`` whose checkpoints these are (its ranks, collectives and engine;
            not imported here: strategy.py imports this module).
    """

    #: recorded in every checkpoint this format writes (the header's ``sharded`` field; None: one file),
    #: and the key under which ``recorded_format`` finds the class again
    name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # a helper base, or a subclass that keeps its parent's format
        known = _FORMATS.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"{cls.__qualname__}: the checkpoint format name {cls.name!r} is taken by "
                            f"{known.__module__}.{known.__qualname__}. Give the format a name of its own: it is "
                            "recorded in every checkpoint it writes and read back to find the format.")
        _FORMATS[cls.name] = cls

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    @property
    def description(self) -> str:
        """How a message names the checkpoints this format reads."""
        return "one-file"

    # -- what the header holds -------------------------------------------------------------------
    def module_state(self, module: torch.nn.Module) -> dict[str, Any]:
        """The module's weights as the header holds them."""
        return module.state_dict()

    def optimizer_states(self, optimizers: list[Any]) -> Any:
        """The optimizers' states as the header holds them."""
        return [optimizer.state_dict() for optimizer in optimizers]

    def wrote(self, header: dict[str, Any]) -> bool:
        """Whether the checkpoint whose header this is was written in this format."""
        return header.get("sharded") == self.name

    # -- writing ---------------------------------------------------------------------------------
    def write(self, checkpoint: dict[str, Any], path: str, module: torch.nn.Module,
              optimizers: list[torch.optim.Optimizer]) -> None:
        """Write ``checkpoint`` (its header, with the state ``module_state``/``optimizer_states`` put
        in it) at ``path``, atomically. Every rank calls it."""
        self.strategy.save_checkpoint(checkpoint, path)

    def stage(self, checkpoint: dict[str, Any], module: torch.nn.Module,
              optimizers: list[torch.optim.Optimizer]) -> Callable[[str], None] | None:
        """Copy the state now (training may change it from here on) and return ``write(path)``, which
        writes what ``write`` writes, for a background thread; None where this rank writes nothing.
        Every rank calls it."""
        if not self.strategy.is_global_zero:
            return None
        copied = snapshot(checkpoint)
        return lambda path: atomic_save(copied, path)

    def require_staging(self, owner: str, fix: str) -> None:
        """Raise ``ValueError`` (naming ``owner``, ending with ``fix``) if ``stage`` cannot copy this
        format's checkpoints aside."""
        return None

    def require_rank_zero_whole(self, owner: str, why_and_fix: str) -> None:
        """Raise ``ValueError`` (naming ``owner``, then ``why_and_fix``) if what rank zero writes of a
        checkpoint is not the whole run's state (each rank writes its own part)."""
        return None

    def link(self, source: str, target: str, collective: bool) -> bool:
        """Make ``target`` a hard link to the checkpoint ``source`` (the same state at the same step):
        one write instead of two. False where it cannot (then ``target`` is written in full).
        ``collective``: every rank calls it, and all get rank zero's answer."""
        strategy = self.strategy
        linked = atomic_link(source, target) if strategy.is_global_zero else False
        return bool(strategy.broadcast(linked)) if collective and strategy.world_size > 1 else linked

    def write_state(self, state: dict[str, Any], directory: str, objects: CheckpointObjects) -> None:
        """``Accelerator.save_state``: ``directory`` holds ``state.ckpt`` and nothing else."""
        from .checkpoint_directories import atomic_directory

        if self.strategy.is_global_zero:
            atomic_directory(directory, state, lambda tmp: None, marker=STATE_FILE)
        self.strategy.barrier("save_state")

    def state_header(self, directory: str) -> str:
        """Where the header of the Accelerator state saved in ``directory`` lies: its ``state.ckpt``
        (or the directory itself when it holds another format's shards, refused once its header is read)."""
        return directory if os.path.isfile(os.path.join(directory, SHARDED_META)) else \
            os.path.join(directory, STATE_FILE)

    # -- reading ---------------------------------------------------------------------------------
    def read(self, path: str, header: dict[str, Any], objects: CheckpointObjects) -> None:
        """Put the module's weights and the optimizers' states back from the checkpoint at ``path``
        (``header``: what was read and verified of it)."""
        objects.weights()
        objects.loaded()  # a hook may still change the optimizer states it is given
        objects.optimizer_states()

    def read_weights(self, path: str, owner: str, from_file: Callable[[], None]) -> None:
        """Only the weights, for evaluation: ``from_file()`` reads them from the one file."""
        from_file()

    @classmethod
    def verify(cls, path: str, header: dict[str, Any], rank: int = 0, world_size: int = 1) -> None:
        """Refuse the checkpoint at ``path`` before anything in it is read, if any of its files would
        unpickle code or is not the file that was written. One file: its header was read with
        ``weights_only=True``, which is the whole check."""
        return None

    @classmethod
    def merge(cls, path: str, header: dict[str, Any]) -> dict[str, Any]:
        """The full, unsharded weights, in this one process (no process group)."""
        return header["state_dict"]


class OneFileFormat(CheckpointFormat):
    """One file: the header holds the weights and optimizer states; rank zero writes it."""

    name = None


class ShardedFormat(CheckpointFormat):
    """A directory of per-rank files and ``meta.ckpt`` (the header without the weights and optimizer
    states), filled and swapped into place by the one atomic directory writer. A subclass writes its
    files into a directory (``save_files``), reads them back (``load_files``), checks them
    (``verify_files``) and merges them (``merge``)."""

    @property
    def description(self) -> str:
        return f"sharded {self.name}"

    def module_state(self, module: torch.nn.Module) -> dict[str, Any]:
        return {}  # in the shards

    def optimizer_states(self, optimizers: list[Any]) -> Any:
        return "sharded"

    def meta(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """``meta.ckpt``: the checkpoint without its weights and optimizer states, and this format's name."""
        meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        meta["sharded"] = self.name
        if "optimizer_states" in checkpoint:
            meta["optimizer_states"] = "sharded"
        return meta

    def save_files(self, directory: str, checkpoint: dict[str, Any], module: torch.nn.Module,
                   optimizers: list[torch.optim.Optimizer]) -> None:
        """Write this rank's files of the state into ``directory`` (a temporary one)."""
        raise NotImplementedError(f"{type(self).__name__}.save_files")

    def load_files(self, path: str, module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        """Read what this rank needs from the directory ``path`` into ``module`` and ``optimizers``."""
        raise NotImplementedError(f"{type(self).__name__}.load_files")

    @classmethod
    def verify_files(cls, path: str) -> None:
        """Refuse a file of this format in ``path`` that would unpickle code (``UnsafeCheckpointError``)."""
        return None

    def write(self, checkpoint: dict[str, Any], path: str, module: torch.nn.Module,
              optimizers: list[torch.optim.Optimizer]) -> None:
        from .checkpoint_directories import atomic_directory

        strategy = self.strategy
        atomic_directory(path, self.meta(checkpoint), lambda tmp: self.save_files(tmp, checkpoint, module, optimizers),
                         strategy.is_global_zero, strategy.broadcast, strategy.barrier)

    def stage(self, checkpoint: dict[str, Any], module: torch.nn.Module,
              optimizers: list[torch.optim.Optimizer]) -> Callable[[str], None] | None:
        raise RuntimeError(f"{type(self).__name__} cannot copy its checkpoint aside for a background write: call "
                           "write instead.")

    def require_staging(self, owner: str, fix: str) -> None:
        """A sharded format that can stage (its ``stage`` copies this rank's files aside) overrides this."""
        raise ValueError(f"{owner} with {type(self.strategy).__name__}: its checkpoints are sharded, each rank "
                             f"writing its own part ({self.name}), which cannot be copied aside for a background write "
                             f"(FSDP's can). {fix}")

    def require_rank_zero_whole(self, owner: str, why_and_fix: str) -> None:
        raise ValueError(f"{owner} with {type(self.strategy).__name__}: its checkpoints are written in shards, one "
                         f"per rank, {why_and_fix}")

    def link(self, source: str, target: str, collective: bool) -> bool:
        return False  # a directory cannot be hard-linked: written in full

    def write_state(self, state: dict[str, Any], directory: str, objects: CheckpointObjects) -> None:
        module, optimizers = objects.shard_objects()
        self.write(state, directory, module, optimizers)

    def state_header(self, directory: str) -> str:
        return directory

    def read(self, path: str, header: dict[str, Any], objects: CheckpointObjects) -> None:
        if "optimizer_states" not in header:
            raise CheckpointError(f"{path!r} holds weights only (save_weights_only=True): it cannot resume training.")
        module, optimizers = objects.shard_objects()
        self.load_files(path, module, optimizers)
        objects.loaded()

    def read_weights(self, path: str, owner: str, from_file: Callable[[], None]) -> None:
        raise ValueError(f"{owner} with {type(self.strategy).__name__}: loading a sharded checkpoint for evaluation "
                         "is not supported. Merge it into plain weights (`trainer merge-weights`) and load them with "
                         "model.load_state_dict before calling.")

    @classmethod
    def verify(cls, path: str, header: dict[str, Any], rank: int = 0, world_size: int = 1) -> None:
        """No file may unpickle code (``verify_files``); every file of the manifest ``meta.ckpt`` recorded
        is there with its size and CRC-32 (the CRCs split among ``world_size`` ranks)."""
        from .checkpoint_errors import CorruptCheckpointError
        from .checkpoint_links import checkpoint_directory
        from .checkpoint_verify import check_manifest

        path = checkpoint_directory(path)  # no link in it leads out of it; read where it really is
        manifest = header.get("files")
        try:
            cls.verify_files(path)
        except CorruptCheckpointError:
            if isinstance(manifest, dict):
                check_manifest(path, manifest, rank, world_size)  # the more precise reason, when there is one
            raise
        if isinstance(manifest, dict):
            check_manifest(path, manifest, rank, world_size)

    @classmethod
    def merge(cls, path: str, header: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"{cls.__name__}.merge")


class DCPFormat(ShardedFormat):
    """FSDP's: ``torch.distributed.checkpoint`` shards of the model and optimizer state, every rank
    writing its own (no gather on rank zero), readable by any number of ranks."""

    name = "fsdp-dcp"

    def __init__(self, strategy: Any) -> None:
        super().__init__(strategy)
        self._writer_group: Any = None  # the gloo group of background writes (stage), made at the first

    def _tensors(self, checkpoint: dict[str, Any], module: torch.nn.Module,
                 optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
        """The sharded state dicts DCP writes (the optimizers' only when the checkpoint has them)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights_only = "optimizer_states" not in checkpoint
        model_sd, optim_sd = get_state_dict(module, [] if weights_only else list(optimizers))
        return {"model": model_sd} if weights_only else {"model": model_sd, "optim": optim_sd}

    def require_staging(self, owner: str, fix: str) -> None:
        return None  # its shards can be copied to CPU memory (stage)

    def save_files(self, directory: str, checkpoint: dict[str, Any], module: torch.nn.Module,
                   optimizers: list[torch.optim.Optimizer]) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._tensors(checkpoint, module, optimizers), checkpoint_id=directory)

    def stage(self, checkpoint: dict[str, Any], module: torch.nn.Module,
              optimizers: list[torch.optim.Optimizer]) -> Callable[[str], None] | None:
        """Copy this rank's shards to CPU memory now and return the write for a background thread of
        every rank (``ModelCheckpoint(async_save=True)``): what ``write`` writes, with the same atomic
        directory, over a gloo group of its own, so that its collectives never interleave with the
        training thread's."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        from .checkpoint_directories import atomic_directory

        tensors, meta = snapshot(self._tensors(checkpoint, module, optimizers)), self.meta(checkpoint)
        if self._writer_group is None:  # every rank is here (a save is collective): create it once
            self._writer_group = dist.new_group(backend="gloo", timeout=self.strategy.timeout)
        group, is_main = self._writer_group, self.strategy.is_global_zero

        def broadcast(obj: Any) -> Any:
            box = [obj]
            dist.broadcast_object_list(box, src=0, group=group)
            return box[0]

        def write(path: str) -> None:
            atomic_directory(path, meta, lambda tmp: dcp.save(tensors, checkpoint_id=tmp, process_group=group),
                             is_main, broadcast, lambda: dist.barrier(group=group))

        return write

    def load_files(self, path: str, module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        """The shards this rank needs (any number of ranks may have written them)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from .checkpoint_verify import safe_dcp_load

        model_sd, optim_sd = get_state_dict(module, list(optimizers))
        tensors: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
        safe_dcp_load(tensors, path)
        set_state_dict(module, list(optimizers), model_state_dict=tensors["model"], optim_state_dict=tensors["optim"])

    @classmethod
    def verify_files(cls, path: str) -> None:
        from .checkpoint_verify import verify_dcp

        verify_dcp(path)

    @classmethod
    def merge(cls, path: str, header: dict[str, Any]) -> dict[str, Any]:
        from .checkpoint_verify import safe_dcp_load

        merged: dict[str, Any] = {}
        safe_dcp_load(merged, path, whole=True)  # every rank's shards, in this one process
        return merged["model"]


class DeepSpeedFormat(ShardedFormat):
    """DeepSpeed's: the engine's own per-rank files (tag ``engine``), written and read by the engine."""

    name = "deepspeed"

    def save_files(self, directory: str, checkpoint: dict[str, Any], module: torch.nn.Module,
                   optimizers: list[torch.optim.Optimizer]) -> None:
        self._engine().save_checkpoint(directory, tag="engine", save_latest=False)

    def load_files(self, path: str, module: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        from .checkpoint_links import checkpoint_directory
        from .checkpoint_verify import verify_deepspeed

        real = checkpoint_directory(path)  # no link leads out of it: the engine opens what was checked
        verify_deepspeed(real)  # the engine loads its files with weights_only=False: no global but DeepSpeed's own
        loaded, _ = self._engine().load_checkpoint(real, tag="engine", load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {path!r} (no engine files under tag 'engine').")

    def _engine(self) -> Any:
        strategy: Any = self.strategy  # a DeepSpeedStrategy: its engine, once a model is prepared
        engine = strategy.engine
        if engine is None:
            raise RuntimeError(f"{type(self.strategy).__name__}: no DeepSpeed engine yet to write or read a checkpoint "
                               "with; prepare the model first (Trainer.fit, Accelerator.prepare).")
        return engine

    @classmethod
    def verify_files(cls, path: str) -> None:
        from .checkpoint_verify import verify_deepspeed

        verify_deepspeed(path)

    @classmethod
    def merge(cls, path: str, header: dict[str, Any]) -> dict[str, Any]:
        """Full fp32 weights rebuilt by the engine's ``zero_to_fp32``, in this one process."""
        try:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError as err:
            raise ImportError(f"{path!r} is a DeepSpeed checkpoint: merging it needs the 'deepspeed' package, which "
                              "is not installed: pip install 'trainer[deepspeed]'.") from err
        from .checkpoint_links import checkpoint_directory
        from .checkpoint_verify import verify_deepspeed

        real = checkpoint_directory(path)  # no link leads out of it: zero_to_fp32 opens what was checked
        verify_deepspeed(real)  # zero_to_fp32 loads with weights_only=False
        state = get_fp32_state_dict_from_zero_checkpoint(real, tag="engine")
        prefix = "module."  # the engine wraps the module in StepForward
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


# -- the registry ----------------------------------------------------------------------------------
def format_named(name: str | None) -> type[CheckpointFormat] | None:
    """The format class recorded as ``name`` in a checkpoint's header (None: one file), if known."""
    return _FORMATS.get(name)


def registered_names() -> list[str]:
    """The names of every sharded format this process knows."""
    return sorted(name for name in _FORMATS if name is not None)


def recorded_format(header: dict[str, Any], path: str) -> type[CheckpointFormat]:
    """The format class that wrote the checkpoint at ``path`` whose header is ``header``."""
    name = header.get("sharded")
    found = _FORMATS.get(name)
    if found is None:
        known = " and ".join(repr(n) for n in registered_names())
        raise CheckpointError(f"{path!r} is a sharded checkpoint of an unknown kind ({name!r}); this version reads "
                              f"{known}. Upgrade the trainer package, or import the module that defines its format.")
    return found


def verify_checkpoint(path: str, header: dict[str, Any], rank: int = 0, world_size: int = 1) -> None:
    """Refuse the checkpoint at ``path`` (``header``: its header) if any file in it would unpickle code
    (``UnsafeCheckpointError``), or is missing, truncated or damaged (``CorruptCheckpointError``), by the
    checks of the format it records. A format this process does not know: its manifest only (its name
    is refused when a format is needed)."""
    found = _FORMATS.get(header.get("sharded")) if isinstance(header, dict) else None
    if found is not None:
        found.verify(path, header, rank, world_size)
        return
    manifest = header.get("files") if isinstance(header, dict) else None
    if isinstance(manifest, dict):
        from .checkpoint_links import checkpoint_directory
        from .checkpoint_verify import check_manifest

        check_manifest(checkpoint_directory(path), manifest, rank, world_size)
