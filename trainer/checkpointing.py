"""The Trainer's checkpoint methods: saving (synchronous, or waited for when written in the
background), plain weights, where checkpoints live, and the save on preemption."""

from __future__ import annotations

import os
from typing import Any

from trainer.strategies.checkpoint_io import BackgroundWriter
from trainer import checkpoint
from trainer.hooks import _add_note
from trainer.preemption import Preempted


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
        ckpt = checkpoint.dump(self, weights_only)
        if getattr(strategy, "sharded_format", None):  # each process writes its own shards
            strategy.save_sharded(ckpt, str(filepath), self.module, self.optimizers)
        else:
            strategy.save_checkpoint(ckpt, str(filepath))

    def _finish_background_writes(self) -> None:
        """Wait for a checkpoint written in the background (rank zero) before the stage ends."""
        self._background_writes.wait()
        if self.world_size > 1 and any(getattr(cb, "async_save", False) for cb in self.callbacks):
            self.accelerator.strategy.barrier("background checkpoint writes")  # only rank zero wrote

    def save_model(self, directory: str, max_shard_size: int | str = "10GB") -> list[str]:
        """Write the module's plain weights as safetensors (sharded above ``max_shard_size``),
        loadable into a plain ``nn.Module`` without this library."""
        if self.module is None:
            raise RuntimeError("trainer.save_model(...): no module yet; call it after fit.")
        return self.accelerator.save_model(self.module, directory, max_shard_size)

    def _checkpoint_dir(self) -> str:
        cb = self.checkpoint_callback
        if cb is not None and cb.dirpath:
            return cb.dirpath
        return os.path.abspath(os.path.join(self.config.default_root_dir, "checkpoints"))

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
        self.save_checkpoint(path)
        if self.checkpoint_callback is not None:
            self.checkpoint_callback.last_model_path = path
        if self.is_global_zero:
            print(f"Received SIGTERM: saved {path} at global_step {self.global_step}. Run the same command with "
                  "trainer.fit(..., ckpt_path='last') to continue where it stopped.", flush=True)
        raise Preempted()
