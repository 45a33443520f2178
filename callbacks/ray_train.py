"""Ray Train: report metrics and checkpoints from a Trainer running inside Ray's ``TorchTrainer``.

Ray starts the worker processes and their process group (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
are set, ``torch.distributed`` is initialised); ``Trainer(strategy="ddp")`` in the training function
joins that group as it joins torchrun's. This callback hands Ray what it needs to restart a failed
worker group: ``ray.train.report(metrics, checkpoint=...)``; ``RayTrainReportCallback.latest_checkpoint()``
is the file a restarted group resumes from. Ray is imported only when a report is made.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from .base import Callback
from .view import TrainerView


class RayTrainReportCallback(Callback):
    """Report the Trainer's metrics and a checkpoint to Ray Train every ``every_n_epochs`` epochs (at the
    end of the epoch) and/or every ``every_n_train_steps`` optimizer steps.

    Every rank must report (Ray waits for all); rank zero's report carries the checkpoint, a directory
    holding ``checkpoint.ckpt`` (the whole training state, as ``trainer.save_checkpoint`` writes it).

    Example (inside ``TorchTrainer``'s ``train_loop_per_worker``)::

        trainer = Trainer(strategy="ddp", callbacks=[RayTrainReportCallback()])
        trainer.fit(model, loader, ckpt_path=RayTrainReportCallback.latest_checkpoint())
    """

    CHECKPOINT_NAME = "checkpoint.ckpt"

    def __init__(self, every_n_epochs: int | None = 1, every_n_train_steps: int | None = None) -> None:
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"RayTrainReportCallback({name}={value!r}): expected a whole number >= 1, or None "
                                 "to not report on that schedule.")
        if every_n_epochs is None and every_n_train_steps is None:
            raise ValueError("RayTrainReportCallback(every_n_epochs=None, every_n_train_steps=None): nothing would "
                             "ever be reported. Set one of them, e.g. every_n_epochs=1.")
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self._last_reported_step = -1
        self.reports = 0

    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage == "fit":  # Ray takes rank zero's checkpoint directory: it must be the whole run's state
            trainer.strategy.checkpoint_format.require_rank_zero_whole(
                "RayTrainReportCallback", "and Ray takes rank zero's directory only. Report with strategy='ddp', or "
                "save with ModelCheckpoint to storage every worker shares.")

    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.every_n_train_steps
        if n is not None and trainer.global_step % n == 0 and trainer.global_step != self._last_reported_step:
            self._report(trainer)

    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None:
        n = self.every_n_epochs
        if n is not None and (trainer.current_epoch + 1) % n == 0 and trainer.global_step != self._last_reported_step:
            self._report(trainer)

    def _report(self, trainer: TrainerView) -> None:
        import ray.train

        self._last_reported_step = trainer.global_step
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        with tempfile.TemporaryDirectory(prefix="trainer-ray-report-") as directory:
            trainer.save_checkpoint(os.path.join(directory, self.CHECKPOINT_NAME))  # every rank: it gathers RNG states
            checkpoint = ray.train.Checkpoint.from_directory(directory) if trainer.is_global_zero else None
            ray.train.report(metrics, checkpoint=checkpoint)  # copies the checkpoint to Ray's storage
        self.reports += 1

    @classmethod
    def latest_checkpoint(cls) -> str | None:
        """In a worker of a (re)started Ray Train run: the path of the last reported ``checkpoint.ckpt``,
        copied to a local directory, for ``fit(ckpt_path=...)``; None on a first start."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        local = checkpoint.to_directory()  # Ray copies it to a fresh local directory of its own
        path = os.path.join(local, cls.CHECKPOINT_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"Ray's latest checkpoint ({checkpoint.path}) holds no {cls.CHECKPOINT_NAME}: it "
                                    "was not reported by RayTrainReportCallback. Resume it the way it was written.")
        return path
