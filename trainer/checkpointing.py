"""The Trainer's checkpoint methods: saving (synchronous, or waited for when written in the
background), plain weights, where checkpoints live, and the save on preemption."""

from __future__ import annotations

import os
from typing import Any

from trainer.strategies.checkpoint_io import BackgroundWriter, non_finite_parameters
from trainer import checkpoint
from trainer.hooks import _add_note
from trainer.preemption import Preempted
from trainer._logging import rank_zero_info, rank_zero_warn


class CheckpointingMixin:
    """Part of ``Trainer`` (which owns every attribute used here)."""

    module: Any
    accelerator: Any
    callbacks: list[Any]
    config: Any
    optimizers: list[Any]
    _background_writes: BackgroundWriter

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        """Write the whole training state to ``filepath`` (atomically: a crash never leaves a
        half-written file under that name). ``weights_only``: just the module's weights."""
        if self.module is None:
            raise RuntimeError("trainer.save_checkpoint(...): nothing to save yet; call it during or after fit.")
        self._background_writes.wait()  # in order: a write still running in the background lands first
        strategy = self.accelerator.strategy
        ckpt = self.dump_checkpoint(weights_only)
        if getattr(strategy, "sharded_format", None):  # each process writes its own shards
            strategy.save_sharded(ckpt, str(filepath), self.module, self.optimizers)
        else:
            strategy.save_checkpoint(ckpt, str(filepath))

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]:
        """The whole training state as a checkpoint dict (call it on every rank: it gathers the
        ranks' RNG states). ``weights_only``: the module's weights and the counters."""
        return checkpoint.dump(self, weights_only)

    def _finish_background_writes(self) -> None:
        """Wait for a checkpoint written in the background (rank zero) before the stage ends."""
        self._background_writes.wait()
        if self.world_size > 1 and any(getattr(cb, "async_save", False) for cb in self.callbacks):
            self.accelerator.strategy.barrier("background checkpoint writes")  # only rank zero wrote

    def save_model(self, directory: str, max_shard_size: int | str = "10GB", module: Any = None) -> list[str]:
        """Write the module's plain weights as safetensors (sharded above ``max_shard_size``),
        loadable into a plain ``nn.Module`` without this library.

        Args:
            module: export only this submodule, by attribute path (``"model"``, ``"backbone.encoder"``)
                or as the object; its keys then carry no prefix of the TrainModule's. A Hugging Face
                model (one with ``save_pretrained``) is written in its own format, ``config.json``
                included, so ``from_pretrained(directory)`` loads it.
        """
        if self.module is None:
            raise RuntimeError("trainer.save_model(...): no module yet; call it after fit.")
        return self.accelerator.save_model(_submodule(self.module, module), directory, max_shard_size)

    def _checkpoint_dir(self) -> str:
        cb = self.checkpoint_callback
        if cb is not None and cb.dirpath:
            return cb.dirpath
        return os.path.abspath(os.path.join(self.config.default_root_dir, "checkpoints"))

    def _eval_checkpoint(self, stage: str, ckpt_path: Any) -> str | None:
        """The file ``validate/test/predict(ckpt_path=...)`` loads weights from: "best" (the checkpoint
        callback's best model), "last" (its last.ckpt, else the newest checkpoint), or a path."""
        if ckpt_path is None:
            return None
        if not isinstance(ckpt_path, (str, os.PathLike)):
            raise TypeError(f"trainer.{stage}(ckpt_path={ckpt_path!r}): expected 'best', 'last' or a path.")
        cb = self.checkpoint_callback
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
                found = checkpoint.newest_checkpoint(self._checkpoint_dir())
                if found is None:
                    raise ValueError(f"trainer.{stage}(ckpt_path='last'): no checkpoint in "
                                     f"{self._checkpoint_dir()!r}. Run fit first, or pass a path.")
                last = found
            return last
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"trainer.{stage}(ckpt_path={str(ckpt_path)!r}): no such file. Expected 'best', "
                                    "'last' or the path of a checkpoint.")
        return str(ckpt_path)

    def _load_weights_for_eval(self, path: str) -> None:
        """Put the weights of checkpoint ``path`` into the module (for validate/test/predict)."""
        from trainer.strategies.checkpoint_io import safe_load

        strategy = self.accelerator.strategy
        if getattr(strategy, "sharded_format", None):
            raise ValueError(f"ckpt_path={path!r} with {type(strategy).__name__}: loading a sharded checkpoint for "
                             "evaluation is not supported. Merge it into plain weights (`trainer merge-weights`) and "
                             "load them with model.load_state_dict before calling.")
        ckpt = safe_load(path)
        checkpoint.check_compatible(ckpt, path, strategy.world_size)
        checkpoint.load_weights_into(self.accelerator.unwrap_model(self.module), ckpt["state_dict"], path,
                                     strict=getattr(self.module, "strict_loading", True))
        self._hooks.module("on_load_checkpoint", ckpt)
        self.ckpt_path = path

    def _settle_background_writes(self, err: BaseException) -> None:
        """A stage is failing: let a checkpoint being written in the background become whole first,
        and carry its own failure, if any, as a note on ``err``."""
        if self._background_writes.pending:
            try:
                self._background_writes.wait()
            except RuntimeError as write_error:
                _add_note(err, str(write_error))

    def _preempt(self) -> None:
        """SIGTERM arrived: the optimizer step is done; save last.ckpt and leave fit."""
        path = os.path.join(self._checkpoint_dir(), "last.ckpt")
        bad = non_finite_parameters(self.module, self.accelerator.strategy.all_gather_object)
        if bad:  # never replace last.ckpt with weights that cannot train
            if self.is_global_zero:
                rank_zero_warn(f"Received SIGTERM: not saving at global_step {self.global_step}, the parameters are not finite "
                               f"(NaN/inf in {', '.join(bad[:5])}); {path} is left as it was.")
            raise Preempted()
        self.save_checkpoint(path)
        from trainer.launch import mark_saved

        mark_saved(self.global_rank)
        if self.checkpoint_callback is not None:
            self.checkpoint_callback.last_model_path = path
        if self.is_global_zero:
            rank_zero_info(f"Received SIGTERM: saved {path} at global_step {self.global_step}. Run the same command with "
                           "trainer.fit(..., ckpt_path='last') to continue where it stopped.")
        raise Preempted()


def _submodule(root: Any, which: Any) -> Any:
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
