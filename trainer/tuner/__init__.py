"""``Tuner``: Lightning's ``trainer.tuner.Tuner`` -- ``lr_find`` (a learning-rate range test) and
``scale_batch_size`` (the largest batch that fits) before training.

Each runs ``trainer.fit`` with only the matching callback (``LearningRateFinder`` / ``BatchSizeFinder`` from
``trainer.callbacks``), which searches at ``on_fit_start``, puts the weights, optimizer and RNG states back and
ends that fit; the Trainer's callbacks, loggers and counters are as before, ready for the real ``fit``.

Example:
    >>> tuner = Tuner(trainer)                                   # doctest: +SKIP
    >>> result = tuner.lr_find(model, train_loader)              # doctest: +SKIP
    >>> result.suggestion(), result.results["lr"], result.png_path   # doctest: +SKIP
    >>> tuner.scale_batch_size(model, mode="binsearch")          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from trainer.callbacks.batch_size_finder import BatchSizeFinder
from trainer.callbacks.lr_finder import LearningRateFinder, LRFinderResult
from trainer.callbacks.tuning import TunerExit

__all__ = ["LRFinderResult", "Tuner"]


class Tuner:
    """Tunes a ``Trainer``'s run before ``fit``: ``lr_find`` and ``scale_batch_size``.

    Args:
        trainer: the Trainer that will run the fit.
    """

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    def lr_find(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None, dataloaders: Any = None,
                datamodule: Any = None, method: str = "fit", min_lr: float = 1e-8, max_lr: float = 1.0,
                num_training: int = 100, mode: str = "exponential", early_stop_threshold: float | None = 4.0,
                update_attr: bool = True, attr_name: str = "") -> LRFinderResult | None:
        """The range test (see ``LearningRateFinder``); returns its result: ``results`` (rates and smoothed
        losses), ``suggestion()``, ``plot()`` and ``png_path`` (``lr_find.png`` in the run's log directory).
        With ``update_attr`` the module's ``lr``/``learning_rate`` (or ``attr_name``) takes the suggestion."""
        _check_method("lr_find", method, dataloaders)
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        self._search(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_lr

    def scale_batch_size(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                         dataloaders: Any = None, datamodule: Any = None, method: str = "fit", mode: str = "power",
                         steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                         batch_arg_name: str = "batch_size") -> int | None:
        """The batch-size search (see ``BatchSizeFinder``); returns the largest size that fit, also written to
        ``batch_arg_name`` on the module (or its hparams, or the datamodule)."""
        _check_method("scale_batch_size", method, dataloaders)
        if train_dataloaders is not None:
            raise ValueError("Tuner.scale_batch_size(model, train_dataloaders=...): a dataloader passed in cannot be "
                             f"rebuilt with another batch size. Define train_dataloader() in {type(model).__name__} "
                             f"(or a DataModule) reading self.{batch_arg_name}, and call scale_batch_size(model).")
        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val,
                                 max_trials=max_trials, batch_arg_name=batch_arg_name)
        self._search(finder, model, None, val_dataloaders, datamodule)
        return finder.optimal_batch_size

    def _search(self, finder: Any, model: Any, train: Any, val: Any, datamodule: Any) -> None:
        trainer = self._trainer
        finder.early_exit = True
        if isinstance(finder, LearningRateFinder):
            finder.png_dir = trainer.log_dir  # where the run's logs go (asked before the loggers step aside)
        saved = trainer.callbacks, trainer.loggers
        trainer.callbacks, trainer.loggers = [finder], []  # only the search runs: no checkpoint, no log row
        try:
            trainer.fit(model, train, val, datamodule=datamodule)
        except TunerExit:
            pass
        finally:
            trainer.callbacks, trainer.loggers = saved


def _check_method(name: str, method: str, dataloaders: Any) -> None:
    if method != "fit":
        raise ValueError(f"Tuner.{name}(method={method!r}): only method='fit' is supported here (the search trains "
                         "fit's steps). Tune with method='fit', then validate/test/predict with the result.")
    if dataloaders is not None:
        raise ValueError(f"Tuner.{name}(dataloaders=...): that argument is for method='validate'/'test'/'predict'; "
                         "for fit pass train_dataloaders=... (and val_dataloaders=...).")
