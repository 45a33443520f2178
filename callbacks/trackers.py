"""Loggers for the experiment trackers users already run: TensorBoard, Weights & Biases, MLflow.

Each imports its package only when it first writes (a missing one names the extra to install),
writes on rank zero only (the Trainer and the Accelerator call loggers there), logs scalars at
the step they belong to, logs hyperparameters once, and closes on success, on an exception and on
Ctrl-C (``finalize(status)``). ``default_loggers`` turns the Trainer's ``logger=`` into loggers.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from .logger import CSVLogger, Logger, _plain
from trainer.strategies.support import rank_zero_info


# the loggers' tools are opened on first use, which may be on a logger's writer thread or on the user's (who
# reads ``logger.experiment`` in a hook): one at a time, so a logger never opens two runs or writers
_OPENING = threading.RLock()


def _require(module: str, extra: str, owner: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{owner} needs the {extra!r} package, which is not installed: "
                          f"pip install 'trainer[{extra}]' (or pip install {extra}).") from err


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as one level, keys joined with '/' (what every tracker's UI shows best)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


class TensorBoardLogger(Logger):
    """Writes TensorBoard event files to ``<save_dir>/<name>/version_N/``.

    View them with ``tensorboard --logdir <save_dir>``. Hyperparameters go to the HPARAMS tab
    and, as YAML, to ``hparams.yaml`` beside the events.

    Args:
        save_dir: root directory of runs.
        name: experiment name (a sub-directory).
        version: an int or a string; by default the next free ``version_N``.
        **writer_kwargs: passed to ``torch.utils.tensorboard.SummaryWriter`` (e.g. ``flush_secs``).
    """

    def __init__(self, save_dir: str = "runs", name: str = "lightning_logs", version: int | str | None = None,
                 **writer_kwargs: Any) -> None:
        super().__init__(save_dir, name, version)
        self._writer_kwargs = writer_kwargs
        self._writer: Any = None

    @property
    def experiment(self) -> Any:
        """The ``SummaryWriter`` (created on first use)."""
        if self._writer is None:
            with _OPENING:
                if self._writer is None:
                    _require("tensorboard", "tensorboard", "TensorBoardLogger")
                    from torch.utils.tensorboard import SummaryWriter

                    os.makedirs(self.log_dir, exist_ok=True)
                    self._writer = SummaryWriter(log_dir=self.log_dir, **self._writer_kwargs)
        return self._writer

    writer = experiment

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # one event holding the row's scalars, built directly: the same simple_value records add_scalar
        # writes, one event per row instead of one per value (a two-value row: ~13 µs instead of ~24)
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=key, simple_value=float(value)) for key, value in metrics.items()])
        self.experiment.file_writer.add_summary(summary, step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        import yaml
        from torch.utils.tensorboard.summary import hparams

        writer = self.experiment
        with open(os.path.join(self.log_dir, "hparams.yaml"), "w") as f:
            yaml.safe_dump(_plain(params), f, sort_keys=False)
        flat = {k: (v if isinstance(v, (bool, int, float, str)) else repr(v)) for k, v in flatten(params).items()}
        # the three summaries of the HPARAMS plugin, in this run's own event file
        for summary in hparams(flat, {}):
            writer.file_writer.add_summary(summary)

    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def _wandb_has_key() -> bool:
    """An API key is configured (environment or ~/.netrc), without reading or showing it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


STEP_KEY = "trainer/global_step"  # W&B's x axis for the Trainer's rows (Lightning's name)


class WandbLogger(Logger):
    """Logs to Weights & Biases. With no API key configured the run is written offline, and one
    line says how to upload it (``wandb sync <dir>``). The key is never printed or written.

    Args:
        project: the W&B project.
        name: the run's display name.
        save_dir: where W&B writes its ``wandb/`` directory.
        offline: force offline (True) or online (False); by default offline when no key is set
            (or whatever ``WANDB_MODE`` says).
        **init_kwargs: passed to ``wandb.init`` (entity, tags, group, ...).
    """

    def __init__(self, project: str | None = None, name: str | None = None, save_dir: str = "runs",
                 offline: bool | None = None, **init_kwargs: Any) -> None:
        super().__init__(save_dir, name or "wandb", version=None)
        self.project, self.run_name = project or "trainer", name
        self.offline, self._init_kwargs = offline, init_kwargs
        self._run: Any = None
        self._pending_config: dict[str, Any] = {}
        self._finish_registered = False
        self._axis_defined = False
        self._native_step = False

    def with_native_step(self) -> "WandbLogger":
        """Rows go in at W&B's own ``step`` (``run.log(row, step=step)``), as Accelerate's tracker does:
        for the Accelerator door, whose steps are the user's and only grow."""
        self._native_step = True
        return self

    @property
    def experiment(self) -> Any:
        """The ``wandb`` run (started on first use)."""
        with _OPENING:
            return self._open_run()

    run = experiment

    def _open_run(self) -> Any:
        if self._run is None:
            wandb = _require("wandb", "wandb", "WandbLogger")
            mode = self._mode()
            os.makedirs(self.save_dir, exist_ok=True)
            # absolute: wandb's service process may have been started from another working directory
            self._run = wandb.init(project=self.project, name=self.run_name, dir=os.path.abspath(self.save_dir), mode=mode,
                                   config=self._pending_config or None, **self._init_kwargs)
            if mode == "offline":
                run_dir = os.path.dirname(self._run.dir)  # .../wandb/offline-run-<time>-<id>
                rank_zero_info(f"W&B: no API key configured, so this run is logged offline to {run_dir}. Upload it later "
                               f"with `wandb sync {run_dir}` (after `wandb login`).")
        return self._run

    def _mode(self) -> str:
        if self.offline is not None:
            return "offline" if self.offline else "online"
        env = os.environ.get("WANDB_MODE")
        if env:
            return env
        return "online" if _wandb_has_key() else "offline"

    @property
    def log_dir(self) -> str:
        if self._run is None and threading.current_thread() is not self.background_writer.thread:
            self.flush_writes(raise_errors=False)  # the run may be opening on the writer thread: its directory
        return os.path.dirname(self._run.dir) if self._run is not None else os.path.join(self.save_dir, "wandb")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # the Trainer's step goes in as a metric, the x axis of every chart (as Lightning's WandbLogger
        # does): W&B's own step must only grow, but a training epoch's row comes at the step of its last
        # step row, after the validation row of the step that follows
        run = self.experiment
        if self._native_step:
            run.log(dict(metrics), step=step)
            return
        if not self._axis_defined and callable(getattr(run, "define_metric", None)):
            run.define_metric("trainer/*", step_metric=STEP_KEY)
            run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
        self._axis_defined = True
        run.log({**metrics, STEP_KEY: step})

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        flat = _plain(flatten(params))
        if self._run is None:
            self._pending_config.update(flat)  # goes into wandb.init(config=...)
        self.experiment.config.update(flat, allow_val_change=True)

    def finalize(self, status: str) -> None:
        """A failure finishes the run now (marked failed); after a successful stage the run stays open
        for the next one (``trainer.test`` after ``fit`` logs to the same run) and is finished at exit."""
        if self._run is None:
            return
        if status in ("success", "preempted"):
            if not self._finish_registered:
                import atexit

                atexit.register(self.close)
                self._finish_registered = True
            return
        self._run.finish(exit_code=1)
        self._run, self._axis_defined = None, False

    def close(self) -> None:
        """Finish the run. wandb's own service process then writes the last records (offline: the
        ``run-<id>.wandb`` file) in the background; they are complete at the latest when this process exits."""
        self.flush_writes(raise_errors=False)  # rows still queued go into the run before it finishes
        if self._run is not None:
            self._run.finish(exit_code=0)
            self._run, self._axis_defined = None, False


class MLflowLogger(Logger):
    """Logs to MLflow: by default a local file store in ``<save_dir>/mlruns`` (browse it with
    ``mlflow ui --backend-store-uri <save_dir>/mlruns``), or the server at ``tracking_uri``.

    Args:
        experiment_name: the MLflow experiment (created when missing).
        run_name: the run's name.
        tracking_uri: e.g. ``http://mlflow:5000`` or ``sqlite:///mlflow.db``; default: the local store
            (or ``$MLFLOW_TRACKING_URI`` when set).
        save_dir: where the default local store lives.
        tags: run tags.
        flush_every: send the buffered metrics once this many rows are waiting, ...
        flush_interval: ... or once this many seconds have passed since the last send (checked when a
            row arrives; 0 sends every row at once); and always when a stage ends. Rows are batched
            because one MLflow call costs ~0.3 ms on a file store and a round trip on a server.
    """

    def __init__(self, experiment_name: str = "default", run_name: str | None = None,
                 tracking_uri: str | None = None, save_dir: str = "runs", tags: dict[str, Any] | None = None,
                 flush_every: int = 100, flush_interval: float = 5.0) -> None:
        super().__init__(save_dir, experiment_name, version=None)
        if flush_every < 1 or flush_interval < 0:
            raise ValueError(f"MLflowLogger(flush_every={flush_every!r}, flush_interval={flush_interval!r}): expected "
                             "flush_every >= 1 rows and flush_interval >= 0 seconds (0 sends every row at once).")
        self.experiment_name, self.run_name, self.tags = experiment_name, run_name, tags or {}
        self.flush_every, self.flush_interval = flush_every, flush_interval
        self._buffer: list[Any] = []
        self._buffered_rows = 0
        self._last_flush = time.monotonic()
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._client: Any = None
        self.run_id: str | None = None

    @property
    def experiment(self) -> Any:
        """The ``MlflowClient`` (the run is created on first use; its id is ``run_id``)."""
        with _OPENING:
            return self._open_client()

    def _open_client(self) -> Any:
        if self._client is None:
            _require("mlflow", "mlflow", "MLflowLogger")
            from mlflow.tracking import MlflowClient

            uri = self.tracking_uri
            if uri is None:
                store = os.path.abspath(os.path.join(self.save_dir, "mlruns"))
                os.makedirs(store, exist_ok=True)
                uri = "file:" + store
                # MLflow 3 refuses its file store unless allowed; we allow it for this local default only
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.tracking_uri = uri
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(self.experiment_name)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(self.experiment_name)
            run = client.create_run(experiment_id, run_name=self.run_name,
                                    tags={str(k): str(v) for k, v in self.tags.items()})
            self.run_id, self._client = run.info.run_id, client
        return self._client

    @property
    def log_dir(self) -> str:
        return os.path.join(self.save_dir, "mlruns")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self.experiment  # noqa: B018 -- start the run now, so its clock and id exist
        now = int(time.time() * 1000)
        self._buffer += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._buffered_rows += 1
        if self._buffered_rows >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics (MLflow takes at most 1000 per call)."""
        while self._buffer and self._client is not None:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._client.log_batch(self.run_id, metrics=batch)
        self._buffered_rows = 0
        self._last_flush = time.monotonic()

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        client = self.experiment
        flat = flatten(params)
        items = [Param(key, str(value)[:6000]) for key, value in flat.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=items[start:start + 100])

    def finalize(self, status: str) -> None:
        if self._client is not None and self.run_id is not None:
            self.flush()
            state = {"success": "FINISHED", "preempted": "KILLED", "interrupted": "KILLED"}.get(status, "FAILED")
            self._client.set_terminated(self.run_id, status=state)
            self._client = None


TRACKERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MLflowLogger}
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "csv": None}


def installed(name: str) -> bool:
    import importlib.util

    package = TRACKER_PACKAGES[name]
    return package is None or importlib.util.find_spec(package) is not None


def default_loggers(logger: Any, config: Any) -> list[Logger]:
    """``logger=None``: TensorBoard if installed, else CSV, under ``default_root_dir/logs/version_N``;
    ``False``: none; else the given ones."""
    if logger is False:
        return []
    if logger is None or logger is True:
        if config.fast_dev_run:
            return []
        kind = TensorBoardLogger if installed("tensorboard") else CSVLogger
        return [kind(save_dir=config.default_root_dir, name="logs")]
    loggers = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    for item in loggers:
        if not isinstance(item, Logger):
            raise TypeError(f"Trainer(logger={item!r}): expected a Logger (e.g. CSVLogger('runs')), a list of them, "
                            "None for the default, or False for none.")
    return loggers
