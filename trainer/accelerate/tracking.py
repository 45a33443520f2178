"""Experiment tracking for the Accelerator door: ``log_with``, ``init_trackers``, ``log``, ``get_tracker``.

The trackers are this library's loggers (``callbacks``), written on the main process only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch


class TrackingMixin:
    """The Accelerator's tracker methods (it owns ``_tracker_specs``, ``trackers``, ``project_dir``)."""

    _tracker_specs: list[Any]
    trackers: list[Any]
    project_dir: str | None
    _log_step: int

    if TYPE_CHECKING:  # the Accelerator's read-only property
        @property
        def is_main_process(self) -> bool: ...

    def init_trackers(self, project_name: str, config: dict[str, Any] | None = None,
                      init_kwargs: dict[str, dict[str, Any]] | None = None) -> None:
        """Start the trackers named in ``log_with`` (on the main process) under ``project_name``, and
        record ``config`` as the run's hyperparameters. ``init_kwargs``: per tracker name, extra
        arguments for its logger (e.g. ``{"wandb": {"entity": "me"}}``)."""
        if not self.is_main_process:
            return
        from trainer.callbacks.logger import CSVLogger
        from trainer.callbacks.trackers import MLflowLogger, TensorBoardLogger, WandbLogger

        root = self.project_dir or "runs"
        init_kwargs = init_kwargs or {}
        build = {"tensorboard": lambda kw: TensorBoardLogger(save_dir=root, name=project_name, **kw),
                 "csv": lambda kw: CSVLogger(save_dir=root, name=project_name, **kw),
                 "wandb": lambda kw: WandbLogger(project=project_name, save_dir=root, **kw).with_native_step(),
                 "mlflow": lambda kw: MLflowLogger(experiment_name=project_name, save_dir=root, **kw)}
        self.trackers = [build[spec](init_kwargs.get(spec, {})) if isinstance(spec, str) else spec
                         for spec in self._tracker_specs]
        if config is not None:
            for tracker in self.trackers:  # written on each tracker's writer thread, as the rows are
                tracker.enqueue_hyperparams(dict(config))

    def log(self, values: dict[str, Any], step: int | None = None, log_kwargs: dict | None = None) -> None:
        """Log scalars to every tracker (main process only). Tensors are read back here, so call it at
        your log interval. ``step`` defaults to a counter of ``log`` calls."""
        if step is None:
            self._log_step += 1
            step = self._log_step
        else:
            self._log_step = step
        if not self.is_main_process or not self.trackers:
            return
        row = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"accelerator.log: {key!r} is a tensor of shape {tuple(value.shape)}; trackers "
                                     "take scalars. Log a reduction (value.mean()) or one entry per element.")
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"accelerator.log: {key!r} is {type(value).__name__} {value!r:.60}; trackers take "
                                "numbers (int, float or a one-element tensor).")
            row[key] = float(value)
        for tracker in self.trackers:  # written on each tracker's writer thread, never this one
            tracker.enqueue_metrics(row, step)

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The logger for ``name`` ("tensorboard", "wandb", "mlflow", "csv"); with ``unwrap=True`` the
        tool's own object (SummaryWriter, wandb run, MlflowClient)."""
        kinds = {"tensorboard": "TensorBoardLogger", "wandb": "WandbLogger", "mlflow": "MLflowLogger",
                 "csv": "CSVLogger"}
        for tracker in self.trackers:
            if type(tracker).__name__ == kinds.get(name, name):
                if unwrap:  # the caller writes to the tool directly, after the rows queued before
                    tracker.flush_writes()
                    return getattr(tracker, "experiment", tracker)
                return tracker
        started = [type(t).__name__ for t in self.trackers] or "none (call init_trackers first)"
        raise ValueError(f"get_tracker({name!r}): no such tracker on this process; started: {started}.")


_TRACKER_NAMES = ("tensorboard", "wandb", "mlflow", "csv")


def _tracker_specs(log_with: Any) -> list[Any]:
    """``log_with`` as a list of tracker names and Logger objects, validated (names known, packages
    installed); "all" is every installed tracker."""
    from trainer.callbacks.logger import Logger
    from trainer.callbacks.trackers import installed

    if log_with is None:
        return []
    items = list(log_with) if isinstance(log_with, (list, tuple)) else [log_with]
    specs: list[Any] = []
    for item in items:
        if isinstance(item, Logger):
            specs.append(item)
            continue
        name = item.lower() if isinstance(item, str) else item
        if name == "all":
            specs += [n for n in _TRACKER_NAMES if installed(n) and n not in specs]
            continue
        if name not in _TRACKER_NAMES:
            from trainer.strategies.support import did_you_mean, quoted

            raise ValueError(f"Accelerator(log_with={item!r}): unknown tracker. Expected one of "
                             f"{quoted(_TRACKER_NAMES)}, 'all', a Logger object, or a list of these."
                             f"{did_you_mean(item, _TRACKER_NAMES)}")
        if not installed(name):
            raise ImportError(f"Accelerator(log_with={item!r}): the {name} package is not installed: "
                              f"pip install 'trainer[{name}]'.")
        if name not in specs:
            specs.append(name)
    return specs
