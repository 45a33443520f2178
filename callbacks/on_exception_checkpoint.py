"""``OnExceptionCheckpoint``: save the training state when fit fails, to resume from it."""

from __future__ import annotations

import os
import warnings
from typing import Any

from trainer.strategies.checkpoint_directories import remove_path
from trainer.strategies.exceptions import MisconfigurationException
from trainer.strategies.support import rank_zero_info
from .base import Callback
from .view import TrainerView


class OnExceptionCheckpoint(Callback):
    """Write ``<dirpath>/<filename>.ckpt`` when fit raises (an error in a step, a hook or a
    callback; Ctrl-C), so ``fit(ckpt_path=...)`` can continue from the failing step.

    Args:
        dirpath: the directory (a str or Path; ``~`` is expanded).
        filename: the file's name without the extension (default ``"on_exception"``).

    After a fit that ends without an error the file is removed, as in Lightning: it only ever
    holds the state of a failed run. On several processes nothing is saved (with a warning): a save
    needs every process, and after one failed the others may be running on or hung.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        if not isinstance(dirpath, (str, os.PathLike)):
            raise MisconfigurationException(f"OnExceptionCheckpoint(dirpath={dirpath!r}): expected a directory path "
                                            "(str or pathlib.Path).")
        if not isinstance(filename, str) or not filename:
            raise MisconfigurationException(f"OnExceptionCheckpoint(filename={filename!r}): expected a non-empty file "
                                            "name without the extension, e.g. 'on_exception'.")
        self.dirpath = os.path.abspath(os.path.expanduser(os.fspath(dirpath)))
        self.filename = filename
        self._failed = False

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        self._failed = False

    def on_exception(self, trainer: TrainerView, module: Any, exception: BaseException) -> None:
        self._failed = True
        if not trainer.training and not trainer.sanity_checking:
            return  # validate/test/predict have no training state to save
        if trainer.world_size > 1:
            if trainer.is_global_zero:
                warnings.warn(f"OnExceptionCheckpoint: not saving after {type(exception).__name__} on "
                              f"{trainer.world_size} processes: a save needs every process, and the others may be "
                              "still running or hung. Resume from the last scheduled checkpoint.", stacklevel=2)
            return
        try:
            os.makedirs(self.dirpath, exist_ok=True)
            trainer.save_checkpoint(self.ckpt_path)
            rank_zero_info(f"OnExceptionCheckpoint: {type(exception).__name__} at global_step {trainer.global_step}; "
                           f"the state at that point is saved to {self.ckpt_path}.")
        except Exception as err:  # noqa: BLE001 - the run's own error propagates; this one is noted on it
            if hasattr(exception, "add_note"):
                exception.add_note(f"OnExceptionCheckpoint could not save {self.ckpt_path}: {type(err).__name__}: {err}")

    def teardown(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage == "fit" and not self._failed and trainer.is_global_zero and os.path.exists(self.ckpt_path):
            remove_path(self.ckpt_path)  # a successful fit: the state of a failure is stale
