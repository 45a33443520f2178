"""``TrainerView``: what a callback may use of the ``trainer`` its hooks receive.

The ``Trainer`` satisfies this Protocol (mypy checks it, see the end of trainer/trainer.py), and the
hooks of ``Callback`` are annotated with it, so a type checker flags a callback that reaches for
anything else; the library's own callbacks are held to it by tests/callbacks/test_trainer_view.py.
Names are Lightning's where Lightning has them. Members typed ``Any`` are objects of the Trainer's
side (its state, config, loop, Accelerator), which callbacks must not import.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from trainer.strategies import Strategy


class TrainerView(Protocol):
    """The Trainer as a callback sees it. Read-only except ``should_stop``.

    Example:
        >>> class StopAtTen(Callback):  # doctest: +SKIP
        ...     def on_train_batch_end(self, trainer: TrainerView, module, outputs, batch, batch_idx):
        ...         if trainer.global_step >= 10:
        ...             trainer.should_stop = True
    """

    # -- where the run is -----------------------------------------------------------------
    @property
    def global_step(self) -> int:
        """Optimizer steps taken (one per accumulation window)."""

    @property
    def current_epoch(self) -> int: ...

    @property
    def state(self) -> Any:
        """The loop's state object (``stage``, ``status``, ``batch_idx``, ``samples_seen``, ...)."""

    @property
    def should_stop(self) -> bool:
        """Settable: True ends fit after this step (on every rank)."""

    @should_stop.setter
    def should_stop(self, value: bool) -> None: ...

    @property
    def is_last_batch(self) -> bool: ...

    @property
    def is_accumulating(self) -> bool:
        """Inside an accumulation window (the optimizer does not step at this micro-batch)."""

    @property
    def sanity_checking(self) -> bool: ...

    @property
    def training(self) -> bool: ...

    @property
    def validating(self) -> bool: ...

    @property
    def testing(self) -> bool: ...

    @property
    def predicting(self) -> bool: ...

    @property
    def interrupted(self) -> bool:
        """A KeyboardInterrupt or SIGTERM ended the last stage."""

    # -- metrics ---------------------------------------------------------------------------
    @property
    def callback_metrics(self) -> dict[str, Any]: ...

    @property
    def logged_metrics(self) -> dict[str, Any]: ...

    @property
    def progress_bar_metrics(self) -> dict[str, Any]: ...

    def refresh_callback_metrics(self) -> None:
        """Read the step's logged values back into ``callback_metrics`` between log intervals."""

    # -- processes -------------------------------------------------------------------------
    @property
    def global_rank(self) -> int: ...

    @property
    def local_rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_global_zero(self) -> bool: ...

    @property
    def num_devices(self) -> int: ...

    @property
    def num_nodes(self) -> int: ...

    @property
    def strategy(self) -> Strategy: ...

    @property
    def precision(self) -> Any: ...

    @property
    def root_device(self) -> torch.device: ...

    @property
    def accelerator(self) -> Any:
        """The engine the Trainer runs on (a ``trainer.Accelerator``)."""

    # -- data --------------------------------------------------------------------------------
    @property
    def train_dataloader(self) -> Any: ...

    @property
    def val_dataloaders(self) -> Any: ...

    @property
    def num_training_batches(self) -> Any:
        """Batches per epoch after limits (None: the loader has no length)."""

    @property
    def num_val_batches(self) -> list[int | None]: ...

    @property
    def estimated_stepping_batches(self) -> int | float: ...

    @property
    def datamodule(self) -> Any: ...

    @property
    def predictions(self) -> list | None:
        """predict's outputs so far (None when they are not kept)."""

    @property
    def predict_batch_indices(self) -> list | None:
        """For each predict batch, its samples' dataset indices."""

    # -- the run's settings and parts ------------------------------------------------------------
    @property
    def config(self) -> Any:
        """Every setting as given (``trainer.trainer_config.TrainerConfig``)."""

    @property
    def max_epochs(self) -> Any: ...

    @property
    def max_steps(self) -> Any: ...

    @property
    def log_every_n_steps(self) -> Any: ...

    @property
    def accumulate_grad_batches(self) -> Any: ...

    @property
    def fast_dev_run(self) -> bool | int: ...

    @property
    def gradient_clip_val(self) -> float | None: ...

    @property
    def gradient_clip_algorithm(self) -> str: ...

    @property
    def val_check_interval(self) -> int | float: ...

    @property
    def check_val_every_n_epoch(self) -> int | None: ...

    @property
    def limit_train_batches(self) -> int | float | None: ...

    @property
    def limit_val_batches(self) -> int | float | None: ...

    @property
    def limit_test_batches(self) -> int | float | None: ...

    @property
    def limit_predict_batches(self) -> int | float | None: ...

    @property
    def num_sanity_val_steps(self) -> int: ...

    @property
    def default_root_dir(self) -> Any: ...

    @property
    def log_dir(self) -> str: ...

    @property
    def checkpoint_dir(self) -> Any: ...

    @property
    def ckpt_path(self) -> str | None: ...

    @property
    def logger(self) -> Any: ...

    @property
    def loggers(self) -> list[Any]: ...

    @property
    def callbacks(self) -> list[Any]: ...

    @property
    def checkpoint_callback(self) -> Any: ...

    @property
    def checkpoint_callbacks(self) -> Any: ...

    @property
    def early_stopping_callback(self) -> Any: ...

    @property
    def early_stopping_callbacks(self) -> Any: ...

    @property
    def progress_bar_callback(self) -> Any: ...

    @property
    def optimizers(self) -> Any: ...

    @property
    def lr_scheduler_configs(self) -> Any: ...

    @property
    def model(self) -> Any:
        """The module as the strategy wrapped it (DDP, FSDP, an engine)."""

    @property
    def lightning_module(self) -> Any:
        """The running ``TrainModule`` (Lightning's name)."""

    @property
    def fit_loop(self) -> Any:
        """The fit loop and its state (Lightning's ``trainer.fit_loop``; ``state_dict()`` is a
        checkpoint's ``"loops"`` entry). The tuning callbacks reconfigure it between epochs."""

    # -- actions -------------------------------------------------------------------------------
    @property
    def background_writer(self) -> Any:
        """Where ``ModelCheckpoint(async_save=True)`` hands its writes."""

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None: ...

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any]: ...

    def print(self, *args: Any, **kwargs: Any) -> None: ...
