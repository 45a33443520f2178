"""Loggers are callbacks that also receive metric rows. ``CSVLogger`` needs no extra package."""

from __future__ import annotations

import csv
import os
from typing import Any

from .base import Callback


class Logger(Callback):
    """Base of every logger: ``log_metrics`` gets rows at log intervals, on rank zero only.

    Args:
        save_dir: the folder under which runs are written.
        name: the experiment's folder inside ``save_dir``.
        version: the run's folder inside that: an int (``version_<n>``) or a name; None takes the
            next free ``version_<n>``.
    """

    def __init__(self, save_dir: str = "runs", name: str = "default", version: int | str | None = None) -> None:
        self.save_dir = str(save_dir)
        self.name = name
        self._version = version

    @property
    def version(self) -> int | str:
        if self._version is None:
            self._version = _next_version(os.path.join(self.save_dir, self.name))
        return self._version

    @property
    def log_dir(self) -> str:
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        return os.path.join(self.save_dir, self.name, version)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def finalize(self, status: str) -> None: ...

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.finalize("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")


def _next_version(root: str) -> int:
    if not os.path.isdir(root):
        return 0
    taken = [int(d.split("_")[1]) for d in os.listdir(root) if d.startswith("version_") and d.split("_")[1].isdigit()]
    return max(taken, default=-1) + 1


class CSVLogger(Logger):
    """Writes ``<save_dir>/<name>/version_N/metrics.csv`` (one row per logged step) and
    ``hparams.yaml``. Columns grow as new metric names appear; the file is rewritten then.

    Args:
        save_dir: root directory of runs.
        name: experiment name (a sub-directory).
        version: an int or a string; by default the next free ``version_N``.
        flush_every: write buffered rows to disk after this many (and always at the end).
    """

    def __init__(self, save_dir: str = "runs", name: str = "default", version: int | str | None = None,
                 flush_every: int = 100) -> None:
        super().__init__(save_dir, name, version)
        self.flush_every = flush_every
        self._rows: list[dict[str, Any]] = []
        self._pending = 0
        self._columns: list[str] = ["step"]
        self._written_columns: list[str] = []

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, "metrics.csv")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **metrics}
        self._columns += [k for k in row if k not in self._columns]
        self._rows.append(row)
        self._pending += 1
        if self._pending >= self.flush_every:
            self.save()

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        import yaml

        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "hparams.yaml"), "w") as f:
            yaml.safe_dump(_plain(params), f, sort_keys=False)

    def save(self) -> None:
        if not self._pending and self._columns == self._written_columns:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        rewrite = self._columns != self._written_columns
        rows = self._rows if rewrite else self._rows[-self._pending:]
        with open(self.metrics_file, "w" if rewrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            if rewrite:
                writer.writeheader()
            writer.writerows(rows)
        self._written_columns = list(self._columns)
        self._pending = 0

    def finalize(self, status: str) -> None:
        self.save()


def _plain(value: Any) -> Any:
    """Hyperparameters as YAML-safe values (anything unusual becomes its repr)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
