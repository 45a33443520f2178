"""What the Trainer's checkpoint methods do: saving (synchronous, or waited for when written in the
background), plain weights, where checkpoints live, loading weights for evaluation, and the save
on preemption. Functions of the Trainer's public surface (its methods delegate here)."""

from __future__ import annotations

import os
from typing import Any

from trainer.strategies.checkpoint_io import BackgroundWriter, non_finite_parameters
from trainer.persistence import trainer_checkpoint
from trainer.loops.hooks import add_note
from trainer.loops.preemption import Preempted
from trainer.logs.console import rank_zero_info, rank_zero_warn


def save_checkpoint(trainer: Any, filepath: str, ckpt: dict[str, Any]) -> None:
    """Write ``ckpt`` (``trainer.dump_checkpoint()``) to ``filepath`` in the strategy's checkpoint format:
    atomically, one file, or each process its own shards."""
    trainer.accelerator.strategy.checkpoint_format.write(ckpt, str(filepath), trainer.module, trainer.optimizers)


def finish_background_writes(trainer: Any) -> None:
    """Wait for a checkpoint written in the background (rank zero) before the stage ends."""
    trainer.background_writer.wait()
    if trainer.world_size > 1 and any(getattr(cb, "async_save", False) for cb in trainer.callbacks):
        trainer.accelerator.strategy.barrier("background checkpoint writes")  # only rank zero wrote


def settle_background_writes(writer: BackgroundWriter, err: BaseException) -> None:
    """A stage is failing: let a checkpoint being written in the background become whole first,
    and carry its own failure, if any, as a note on ``err``."""
    if writer.pending:
        try:
            writer.wait()
        except RuntimeError as write_error:
            add_note(err, str(write_error))


def checkpoint_dir(trainer: Any) -> str:
    cb = trainer.checkpoint_callback
    if cb is not None and cb.dirpath:
        return cb.dirpath
    return os.path.abspath(os.path.join(trainer.config.default_root_dir, "checkpoints"))


def eval_checkpoint(trainer: Any, stage: str, ckpt_path: Any) -> str | None:
    """The file ``validate/test/predict(ckpt_path=...)`` loads weights from: "best" (the checkpoint
    callback's best model), "last" (its last.ckpt, else the newest checkpoint), or a path."""
    if ckpt_path is None:
        return None
    if not isinstance(ckpt_path, (str, os.PathLike)):
        raise TypeError(f"trainer.{stage}(ckpt_path={ckpt_path!r}): expected 'best', 'last' or a path.")
    cb = trainer.checkpoint_callback
    if ckpt_path == "best":
        best = getattr(cb, "best_model_path", "") if cb is not None else ""
        if not best:
            why = ("there is no ModelCheckpoint callback" if cb is None else
                   "the ModelCheckpoint has no best checkpoint yet (fit has not saved one, or it has no monitor "
                   "and saved none)")
            raise ValueError(f"trainer.{stage}(ckpt_path='best'): {why}. Run fit with a ModelCheckpoint first, "
                             "or pass a path.")
        return best
    if ckpt_path == "last":
        last = getattr(cb, "last_model_path", "") if cb is not None else ""
        if not last:
            found = trainer_checkpoint.newest_checkpoint(trainer.checkpoint_dir, cb)
            if found is None:
                raise ValueError(f"trainer.{stage}(ckpt_path='last'): no checkpoint in "
                                 f"{trainer.checkpoint_dir!r}. Run fit first, or pass a path.")
            last = found
        return last
    if not os.path.exists(ckpt_path):
        raise FileNotFoundError(f"trainer.{stage}(ckpt_path={str(ckpt_path)!r}): no such file. Expected 'best', "
                                "'last' or the path of a checkpoint.")
    return str(ckpt_path)


def load_weights_for_eval(trainer: Any, path: str, hooks: Any) -> None:
    """Put the weights of checkpoint ``path`` into the module (for validate/test/predict)."""
    from trainer.strategies.checkpoint_io import safe_load

    strategy = trainer.accelerator.strategy

    def from_file() -> None:  # the one file's weights (a format with shards refuses before this)
        ckpt = safe_load(path)
        trainer_checkpoint.check_compatible(ckpt, path, strategy.world_size)
        trainer_checkpoint.load_weights_into(trainer.accelerator.unwrap_model(trainer.module), ckpt["state_dict"], path,
                                     strict=getattr(trainer.module, "strict_loading", True))
        hooks.module("on_load_checkpoint", ckpt)

    strategy.checkpoint_format.read_weights(path, f"ckpt_path={path!r}", from_file)


def save_on_preemption(trainer: Any) -> None:
    """SIGTERM arrived: the optimizer step is done; save last.ckpt and leave fit. SLURM's warning signal
    (``SLURMEnvironment``) on any rank: the same, then rank zero requeues the job."""
    path = os.path.join(trainer.checkpoint_dir, "last.ckpt")
    requeue = trainer.slurm_environment.requeues() and any(trainer.accelerator.strategy.all_gather_object(
        getattr(trainer.fit_loop, "requeue_signalled", False)))
    bad = non_finite_parameters(trainer.module, trainer.accelerator.strategy.all_gather_object)
    if bad:  # never replace last.ckpt with weights that cannot train
        if trainer.is_global_zero:
            rank_zero_warn(f"Received SIGTERM: not saving at global_step {trainer.global_step}, the parameters are not "
                           f"finite (NaN/inf in {', '.join(bad[:5])}); {path} is left as it was.")
        raise Preempted()
    trainer.save_checkpoint(path)
    from trainer.engine.script_launch import mark_saved

    mark_saved(trainer.global_rank)
    if trainer.checkpoint_callback is not None:
        trainer.checkpoint_callback.last_model_path = path
    if requeue:
        if trainer.is_global_zero:
            slurm = trainer.slurm_environment
            rank_zero_info(f"Received SLURM's warning signal ({slurm.requeue_signal.name}): saved {path} at "
                           f"global_step {trainer.global_step}; {slurm.requeue()}.")
        raise Preempted()
    if trainer.is_global_zero:
        rank_zero_info(f"Received SIGTERM: saved {path} at global_step {trainer.global_step}. Run the same command "
                       "with trainer.fit(..., ckpt_path='last') to continue where it stopped.")
    raise Preempted()


def submodule_of(root: Any, which: Any) -> Any:
    """``root``, or its submodule named by attribute path or given as the object."""
    if which is None:
        return root
    if isinstance(which, str):
        try:
            return root.get_submodule(which)
        except AttributeError:
            names = [name for name, _ in root.named_children()]
            raise ValueError(f"trainer.save_model(module={which!r}): {type(root).__name__} has no submodule of that "
                             f"name. Its children are {names}; name one (a dotted path reaches deeper).") from None
    if any(which is m for m in root.modules()):
        return which
    raise ValueError(f"trainer.save_model(module={type(which).__name__}(...)): that module is not part of the trained "
                     f"{type(root).__name__}. Pass one of its submodules, or its attribute name.")
