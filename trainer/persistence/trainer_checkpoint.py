"""What a Trainer checkpoint holds, and putting it back.

A checkpoint is one file (``torch.save`` of plain containers and tensors, loaded with
``weights_only=True``) written atomically by ``strategies.checkpoint_io``. It holds:

    format_version, metadata  library/torch versions, resolved Trainer config, world size, strategy
    state_dict                the module's weights          hparams     save_hyperparameters()
    optimizer_states          lr_schedulers                 precision   (the gradient scaler)
    loops                     global_step, epoch, position in the epoch, the RNG states that
                              decide the epoch's data order, metric accumulators, callback_metrics
    rng                       python, numpy, torch and CUDA generators, per rank
    callbacks                 {state_key: state_dict()} of every callback
    datamodule                the DataModule's state_dict() (and datamodule_hparams), when fit got one
    ... and whatever the module's / callbacks' on_save_checkpoint add.
"""

from __future__ import annotations

import collections
import os
import platform
import re
import time
import warnings
from typing import Any

import torch

from trainer.strategies.checkpoint_io import CheckpointError
from trainer.engine.compiled import strip_compile_prefix
from trainer.persistence.layout import FORMAT_VERSION, check_layout
from trainer.data.data_position import rng_states, set_rng_states
from trainer.data.distributed_data import default_data_seed
from trainer.logs.console import rank_zero_info



def _plain(value: Any) -> Any:
    """Hyperparameters reduced to what loads without unpickling code (others become their repr)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # a pathlib.Path hyperparameter (pytest's tmp_path) keeps its text
    return repr(value)


def _paths_as_text(value: Any) -> Any:
    """``value`` with every ``os.PathLike`` inside (a Path passed as default_root_dir, dirpath, in a
    callback's state or by on_save_checkpoint) replaced by its text, so that the checkpoint loads
    with ``weights_only=True``. Containers holding none come back as themselves (a state_dict's
    ``_metadata`` stays); others are rebuilt with their type."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        items = {k: _paths_as_text(v) for k, v in value.items()}
        if all(items[k] is v for k, v in value.items()) and not any(isinstance(k, os.PathLike) for k in value):
            return value
        out: Any = type(value)() if type(value) in (dict, collections.OrderedDict) else {}
        out.update({_paths_as_text(k): v for k, v in items.items()})
        if hasattr(value, "_metadata"):
            out._metadata = value._metadata
        return out
    if isinstance(value, (list, tuple)):
        entries = [_paths_as_text(v) for v in value]
        if all(a is b for a, b in zip(entries, value)):
            return value
        return type(value)(entries) if type(value) in (list, tuple) else entries
    return value


def header(strategy: Any, **metadata: Any) -> dict[str, Any]:
    """What every checkpoint of both doors starts with: the format version and who wrote it."""
    from trainer import __version__

    return {"format_version": FORMAT_VERSION,
            "metadata": {"trainer_version": __version__, "torch_version": str(torch.__version__),
                         "python_version": platform.python_version(), "world_size": strategy.world_size,
                         "strategy": type(strategy).__name__, "precision": strategy.precision.name,
                         "saved_at": time.time(), **metadata}}


def _gather_rng_states(strategy: Any) -> list[dict[str, Any]]:
    """Every rank's ``rng_states()``, its tensors sent as raw bytes: a tensor pickled for the gather goes through
    ``torch.save``, so each rank that only sends its state called ``torch.save`` at every checkpoint (Lightning's
    test that only rank zero saves counts the calls on every rank)."""
    def pack(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("__tensor__", value.cpu().numpy().tobytes(), str(value.dtype).removeprefix("torch."),
                    tuple(value.shape))
        if isinstance(value, (list, tuple)):
            return type(value)(pack(v) for v in value)
        if isinstance(value, dict):
            return {k: pack(v) for k, v in value.items()}
        return value

    def unpack(value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 4 and value[0] == "__tensor__":
            dtype = getattr(torch, value[2])
            return torch.frombuffer(bytearray(value[1]), dtype=dtype).reshape(value[3]).clone() if value[1] \
                else torch.empty(value[3], dtype=dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(unpack(v) for v in value)
        if isinstance(value, dict):
            return {k: unpack(v) for k, v in value.items()}
        return value

    if strategy.world_size == 1:
        return [rng_states()]
    return [unpack(states) for states in strategy.all_gather_object(pack(rng_states()))]


def dump(trainer: Any, weights_only: bool, hooks: Any) -> dict[str, Any]:
    """The whole training state of ``trainer`` as a checkpoint dict (``hooks``: the running stage's
    dispatch, for ``on_save_checkpoint``)."""
    module = trainer.module
    if trainer.state.stage in ("fit", "sanity_check"):
        trainer.fit_loop.metrics.flush_train()  # never write a checkpoint past an undetected non-finite loss
    strategy = trainer.accelerator.strategy
    fmt = strategy.checkpoint_format  # which state the header holds and which its files (shards)
    ckpt: dict[str, Any] = {
        **header(strategy, config=trainer.config.to_dict(), module=written_by(module)),
        "state_dict": fmt.module_state(trainer.accelerator.unwrap_model(module)),
        "hparams": _plain(dict(module.hparams)),
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
    }
    if not weights_only:
        ckpt.update({
            "optimizer_states": fmt.optimizer_states(trainer.optimizers),
            "lr_schedulers": [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs],
            "precision": strategy.precision.state_dict(),
            "loops": trainer.fit_loop.state_dict(),
            "rng": dict(enumerate(_gather_rng_states(strategy))),  # every rank's
            "callbacks": _callback_states(trainer.callbacks),
        })
        if trainer.datamodule is not None:
            ckpt["datamodule"] = trainer.datamodule.state_dict()
            ckpt["datamodule_hparams"] = _plain(dict(trainer.datamodule.hparams))
        hooks("on_save_checkpoint", ckpt)
    return _paths_as_text(ckpt)


def check_compatible(ckpt: Any, path: str, world_size: int | None) -> None:
    """Refuse checkpoints this version cannot use, saying why and what to do (``world_size`` None:
    everything but the world size)."""
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or not ("state_dict" in ckpt or "sharded" in ckpt):
        from trainer.persistence.kinds import describe

        found, fix = describe(ckpt, path)
        raise CheckpointError(f"{path!r} is not a Trainer checkpoint: it holds {found}; expected a checkpoint written "
                              f"by Trainer.save_checkpoint or ModelCheckpoint (format_version, state_dict, ...). {fix}")
    check_layout(ckpt, path)  # every field this library reads, named when wrong
    version = ckpt["format_version"]
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has checkpoint format {version}, newer than the {FORMAT_VERSION} this "
                              f"version reads (it was written by trainer {ckpt['metadata'].get('trainer_version')}). "
                              "Upgrade the trainer package to resume from it.")
    if world_size is None:
        return
    saved_world = ckpt["metadata"].get("world_size", 1)
    loops = ckpt.get("loops") or {}
    # a one-file checkpoint re-deals the rest of its epoch over the new processes (reshard.py)
    if saved_world != world_size and loops.get("batch_idx", 0) and not loops.get("epoch_trained") \
            and ckpt.get("sharded"):
        raise CheckpointError(
            f"{path!r} was saved in the middle of an epoch (batch_idx {loops['batch_idx']}) by {saved_world} "
            f"process(es) as a sharded checkpoint; this run has {world_size}. Resume with {saved_world} process(es), "
            "or from a checkpoint taken at an epoch end.")


def written_by(module: Any) -> str:
    """The class that writes a checkpoint, as ``metadata.module`` records it (``package.module.Class``)."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def weight_differences(own: dict[str, Any], state_dict: dict[str, Any]) -> list[str]:
    """What keeps ``state_dict`` from loading into a module whose state dict is ``own``: its missing,
    unexpected and mis-shaped keys, one phrase per kind (none: it fits)."""
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state_dict)
                        if isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != own[k].shape)
    return [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches", mismatched)) if keys]


def load_weights_into(module: torch.nn.Module, state_dict: dict[str, Any], path: str, strict: bool,
                      pages: Any = None, non_strict_fix: str = "set `model.strict_loading = False` before fit",
                      writer: str | None = None) -> None:
    """``load_state_dict`` that lists missing, unexpected and mis-shaped keys in one error. With
    ``pages`` (a memory-mapped checkpoint's), the copy goes in chunks, each chunk's pages dropped.
    ``non_strict_fix``: how the caller's user loads only the matching keys (named in the error);
    ``writer``: the class that wrote the checkpoint (``metadata.module``), named when it differs."""
    own = module.state_dict()
    state_dict = strip_compile_prefix(state_dict, own)  # saved from a torch.compile wrapper
    parts = weight_differences(own, state_dict)
    if parts:
        by = f" (written by {writer})" if writer and writer != written_by(module) else ""
        message = (f"Checkpoint {path!r}{by} does not match {type(module).__name__}: " + "; ".join(parts) + ".")
        if strict:
            raise CheckpointError(message + f" Is it from a different model? To load only the matching keys, "
                                            f"{non_strict_fix}.")
        warnings.warn(message + " Loading the matching keys only.", stacklevel=3)
        state_dict = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    del own
    if pages is not None:
        from trainer.strategies.mapped import load_module_in_place

        load_module_in_place(module, state_dict, pages)
    else:
        module.load_state_dict(state_dict, strict=False)


def restore(trainer: Any, ckpt: dict[str, Any], path: str, hooks: Any) -> None:
    """Put a whole training state back: weights, optimizer, schedulers, scaler, loops, RNG, callbacks."""
    strategy = trainer.accelerator.strategy
    check_compatible(ckpt, path, None)  # its format first, then the strategy, then the world size
    if "accelerator" in ckpt:  # the same format, but no loop state to resume a fit from
        from trainer.persistence.kinds import describe

        found, fix = describe(ckpt, path)
        raise CheckpointError(f"{path!r} is not a Trainer checkpoint: it holds {found}, with no loop state to resume "
                              "a fit from; expected a checkpoint written by Trainer.save_checkpoint or ModelCheckpoint "
                              f"(format_version, state_dict, loops, ...). {fix}")
    fmt = strategy.checkpoint_format
    if not fmt.wrote(ckpt):
        sharded, saved = ckpt.get("sharded"), ckpt["metadata"].get("strategy")
        raise CheckpointError(
            f"{path!r} was written by {saved} ({'sharded: ' + sharded if sharded else 'one file'}), but this run uses "
            f"{type(strategy).__name__}, which reads {fmt.description} checkpoints. Resume with the strategy that "
            f"saved it, or turn it into plain weights with `trainer merge-weights {path} OUT` and load those into the "
            "model before a new fit.")
    check_compatible(ckpt, path, strategy.world_size)
    if "loops" in ckpt:  # counters and optimizer settings against this run, before anything is put back
        from trainer.persistence.resume_checks import check_against_run

        check_against_run(trainer, ckpt, path)
    fmt.read(path, ckpt, _TrainerObjects(trainer, ckpt, path, hooks))  # weights and optimizer states
    _restore_rest(trainer, ckpt, path)


class _TrainerObjects:
    """The Trainer's module and optimizers, lent to the checkpoint format that reads them back
    (``CheckpointObjects``): how a one-file checkpoint's header state goes in, with the Trainer's checks."""

    def __init__(self, trainer: Any, ckpt: dict[str, Any], path: str, hooks: Any) -> None:
        self.trainer, self.ckpt, self.path, self.hooks = trainer, ckpt, path, hooks
        self.pages = getattr(ckpt, "pages", None)  # a memory-mapped file: copy into the live state piece by piece
        self.strict = getattr(trainer.module, "strict_loading", True)

    def shard_objects(self) -> tuple[Any, list[Any]]:
        return self.trainer.module, self.trainer.optimizers

    def weights(self) -> None:
        load_weights_into(self.trainer.accelerator.unwrap_model(self.trainer.module), self.ckpt["state_dict"],
                          self.path, strict=self.strict, pages=self.pages,
                          writer=self.ckpt["metadata"].get("module"))

    def loaded(self) -> None:
        self.hooks("on_load_checkpoint", self.ckpt)

    def optimizer_states(self) -> None:
        path, pages = self.path, self.pages
        if "optimizer_states" not in self.ckpt:
            raise CheckpointError(f"{path!r} holds weights only (save_weights_only=True): it cannot resume training. "
                                  "Load it with model.load_state_dict(...) and start a new fit instead.")
        for opt, state in zip(self.trainer.optimizers, self.ckpt["optimizer_states"]):
            try:
                opt.load_state_dict(state)
            except ValueError as err:
                if self.strict:
                    raise CheckpointError(f"{path!r}: the optimizer state does not fit this model's optimizer "
                                          f"({err}). Was the checkpoint written for other parameters?") from None
                warnings.warn(f"{path!r}: optimizer state skipped, it does not fit ({err}); strict_loading=False.",
                              stacklevel=5)  # the caller of restore's caller, as before
                continue
            if pages is not None:
                from trainer.strategies.mapped import own_optimizer_state

                own_optimizer_state(opt, pages)
            self.trainer.accelerator.strategy.setup_optimizer(opt)


def _restore_rest(trainer: Any, ckpt: dict[str, Any], path: str) -> None:
    """Schedulers, scaler, loop counters, metric accumulators, callbacks and RNG."""
    strategy = trainer.accelerator.strategy
    for cfg, state in zip(trainer.lr_scheduler_configs, ckpt["lr_schedulers"]):
        cfg.scheduler.load_state_dict(state)
    strategy.precision.load_state_dict(ckpt.get("precision", {}))
    loop = trainer.fit_loop
    loop.load_state_dict(ckpt["loops"])
    loop.resume_order = _epoch_order(ckpt, path, strategy.world_size)
    if trainer.datamodule is not None and "datamodule" in ckpt:
        trainer.datamodule.load_state_dict(ckpt["datamodule"])
    by_key = {cb.state_key: cb for cb in trainer.callbacks}
    for cb in trainer.callbacks:  # a key an earlier version wrote (the state_key format changed)
        for key in getattr(cb, "_legacy_state_keys", ()):
            by_key.setdefault(key, cb)
    for key, state in ckpt.get("callbacks", {}).items():
        if key in by_key:
            by_key[key].load_state_dict(state)
    rng = ckpt.get("rng", {})
    loop.resume_rng = rng.get(strategy.global_rank) if rng else None
    if loop.resume_rng is None and rng:
        warnings.warn(f"{path!r} has no RNG state for rank {strategy.global_rank}; random streams restart.",
                      stacklevel=3)


def _epoch_order(ckpt: dict[str, Any], path: str, world_size: int) -> dict[str, Any] | None:
    """Where the checkpoint stands in an epoch whose rest must be re-dealt (it was saved inside the
    epoch by another number of processes, or inside an epoch already re-dealt); else None."""
    loops, saved_world = ckpt["loops"], ckpt["metadata"].get("world_size", 1)
    origin = loops.get("epoch_order")
    if not loops["batch_idx"] or loops.get("epoch_trained") or (origin is None and saved_world == world_size):
        return None
    if origin is None:  # the epoch was dealt by the processes that saved it
        origin = {"world_size": saved_world, "batch_size": loops.get("train_batch_size"),
                  "seed": loops.get("data_seed", default_data_seed()), "consumed": None}
        if loops.get("train_shuffle") is not None:  # how its distributed sampler dealt it (older files: as this run's)
            origin["shuffle"] = bool(loops["train_shuffle"])
    return {**origin, "path": path, "saved_world": saved_world, "batch_idx": loops["batch_idx"]}


def requeue_save(trainer: Any) -> str | None:
    """The last.ckpt a SLURM job wrote at its warning signal before it was requeued: in the checkpoint
    directory, else (the requeued job logs to a new version) the newest among the earlier runs' beside it."""
    from trainer.callbacks.model_checkpoint import earlier_run_dirpaths

    own = os.path.join(trainer.checkpoint_dir, "last.ckpt")
    if os.path.exists(own):
        return own
    found = [os.path.join(d, "last.ckpt") for d in earlier_run_dirpaths(trainer.checkpoint_callback)]
    found = [p for p in found if os.path.exists(p)]
    return max(found, key=os.path.getmtime) if found else None


def _earlier_runs_candidates(callback: Any) -> list[str]:
    """The checkpoints of the earlier runs beside a default, logger-derived ``dirpath``
    (``<save_dir>/<name>/*/checkpoints``): their last.ckpt files newest first, then the rest newest first."""
    from trainer.callbacks.model_checkpoint import earlier_run_dirpaths
    from trainer.strategies.checkpoint_directories import is_temporary

    paths = [os.path.join(d, n) for d in earlier_run_dirpaths(callback) for n in os.listdir(d)
             if n.endswith(_extensions(callback)) and not is_temporary(n)]
    last = _last_files(paths, callback)
    return last + sorted((p for p in paths if p not in last), key=os.path.getmtime, reverse=True)


def newest_checkpoint(dirpath: str, callback: Any = None) -> str | None:
    """last.ckpt in ``dirpath``, else its newest whole ``.ckpt``; None when there is none."""
    from trainer.strategies.checkpoint_directories import is_temporary

    paths = [os.path.join(dirpath, n) for n in os.listdir(dirpath)
             if n.endswith(_extensions(callback)) and not is_temporary(n)] if os.path.isdir(dirpath) else []
    last = _last_files(paths, callback)
    newest_first = last or sorted(paths, key=os.path.getmtime, reverse=True) or _earlier_runs_candidates(callback)
    return newest_first[0] if newest_first else None


def _extensions(callback: Any) -> tuple[str, ...]:
    """The file endings of checkpoints: ``.ckpt`` and the checkpoint callback's ``FILE_EXTENSION``."""
    return (".ckpt", getattr(callback, "FILE_EXTENSION", ".ckpt"))


def _last_files(paths: list[str], callback: Any = None) -> list[str]:
    """The last.ckpt files among ``paths``, newest first: ``last.ckpt`` and the ``last-v<n>.ckpt`` a
    rerun into the same directory writes beside an earlier run's (ModelCheckpoint's version counter);
    with the callback's ``CHECKPOINT_NAME_LAST`` (a template matches by its text before the first
    field) and ``FILE_EXTENSION``."""
    name = getattr(callback, "CHECKPOINT_NAME_LAST", "last")
    stem = re.escape(name.split("{")[0]) + (".*" if "{" in name else "")
    pattern = f"{stem}(-v\\d+)?({'|'.join(re.escape(e) for e in _extensions(callback))})"
    last = [p for p in paths if re.fullmatch(pattern, os.path.basename(p))]
    return sorted(last, key=os.path.getmtime, reverse=True)


def load_for_resume(trainer: Any, ckpt_path: str) -> tuple[str, dict[str, Any]] | None:
    """Read the checkpoint to resume from. ``"last"``: the checkpoint directory's last.ckpt, else
    its newest whole checkpoint (damaged ones are reported and skipped); None when there is
    none, and training starts fresh. Any other value is a path that must load. A checkpoint that
    would unpickle code is refused, never skipped."""
    from trainer.strategies.checkpoint_directories import clean_temporaries, is_temporary
    from trainer.strategies.checkpoint_io import CorruptCheckpointError

    strategy = trainer.accelerator.strategy
    if ckpt_path != "last":
        if strategy.is_global_zero:
            _recover(os.path.dirname(os.path.abspath(ckpt_path)), only=os.path.basename(ckpt_path))
        strategy.barrier("recover checkpoint")
        return ckpt_path, read_verified(strategy, ckpt_path, mmap=True)
    dirpath = trainer.checkpoint_dir
    candidates: list[str] = []
    if strategy.is_global_zero and os.path.isdir(dirpath):
        _recover(dirpath)
        clean_temporaries(dirpath)  # those left by a run killed while saving (not a live writer's)
    strategy.barrier("recover checkpoints")
    cb = trainer.checkpoint_callback
    if os.path.isdir(dirpath):
        paths = [os.path.join(dirpath, n) for n in os.listdir(dirpath)
                 if n.endswith(_extensions(cb)) and not is_temporary(n)]
        last = _last_files(paths, cb)
        candidates = last + sorted((p for p in paths if p not in last), key=os.path.getmtime, reverse=True)
    if not candidates:  # a new run logs to a new version: the runs before it wrote beside this one's folder
        from trainer.callbacks.model_checkpoint import earlier_run_dirpaths

        earlier = earlier_run_dirpaths(cb)
        if earlier:
            if strategy.is_global_zero:
                for directory in earlier:
                    _recover(directory)
            strategy.barrier("recover earlier runs' checkpoints")
            candidates = _earlier_runs_candidates(cb)
            dirpath = f"{dirpath} (or the earlier runs' {', '.join(earlier)})"
    for path in candidates:
        try:
            ckpt = read_verified(strategy, path, mmap=True)
            check_layout(ckpt, path)  # a malformed file is passed over like a damaged one
            return path, ckpt
        except CorruptCheckpointError as err:
            warnings.warn(f"ckpt_path='last': skipping a damaged checkpoint. {err}", stacklevel=3)
    if trainer.is_global_zero:
        rank_zero_info(f"ckpt_path='last': no checkpoint found in {dirpath!r}; starting from scratch.")
    return None


def _callback_states(callbacks: list[Any]) -> dict[str, Any]:
    """Every callback's ``state_dict()``; an error names the callback that raised it (not the one saving)."""
    states = {}
    for cb in callbacks:
        try:
            states[cb.state_key] = cb.state_dict()
        except Exception as err:
            if hasattr(err, "add_note"):
                err.add_note(f"raised in {type(cb).__name__}.state_dict, called to collect the callbacks' states "
                             "for a checkpoint")
            raise
    return states


def _recover(directory: str, only: str | None = None) -> None:
    from trainer.strategies.checkpoint_directories import recover_swaps

    for name in recover_swaps(directory, only):
        rank_zero_info(f"Recovered {os.path.join(directory, name)!r}: a run was killed while putting it in place.")


def _refuse_foreign_directory(path: str) -> None:
    """A directory without meta.ckpt, named with what it holds instead (an Accelerator state, an
    Accelerate folder, plain weights) and how to load that."""
    from trainer.strategies.checkpoint_io import SHARDED_META, CorruptCheckpointError
    from trainer.persistence.kinds import describe_directory

    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, SHARDED_META)):
        return
    found, fix = describe_directory(path) or ("nothing readable", "")
    raise CorruptCheckpointError(f"Checkpoint {path!r} is a directory without {SHARDED_META}, so not a whole sharded "
                                 f"checkpoint of this library: it holds {found}. {fix}")


def read_verified(strategy: Any, path: str, mmap: bool = False) -> dict[str, Any]:
    """``safe_load(path, mmap=mmap)``; for a checkpoint directory also ``verify_checkpoint`` by the format its
    header records (no file would unpickle code; sizes and CRC-32s as written, the CRC work split among
    the ranks). Every rank gets the same verdict: if any rank finds a fault, all raise it."""
    from trainer.strategies.checkpoint_format import verify_checkpoint
    from trainer.strategies.checkpoint_io import CheckpointError, safe_load

    ckpt: Any = None
    failure: BaseException | None = None
    try:
        _refuse_foreign_directory(path)
        ckpt = safe_load(path, mmap=mmap)
        if os.path.isdir(path) and isinstance(ckpt, dict):
            verify_checkpoint(path, ckpt, strategy.global_rank, strategy.world_size)
    except (CheckpointError, FileNotFoundError) as err:
        failure = err
    if strategy.world_size > 1:
        verdicts = strategy.all_gather_object(None if failure is None else (type(failure), str(failure)))
        found = next((v for v in verdicts if v is not None), None)
        if found is not None and failure is None:
            failure = found[0](found[1])
    if failure is not None:
        raise failure
    return ckpt
