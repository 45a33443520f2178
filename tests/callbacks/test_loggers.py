"""Loggers write real files, read back here with each tool's own reader: TensorBoard's
EventAccumulator, MLflow's client, W&B's record schema, csv, and an image decoder for the loss plot.
With 2 processes only rank zero writes."""

from __future__ import annotations

import csv
import glob
import os

import pytest
import torch

from trainer.callbacks import CSVLogger, MLflowLogger, TensorBoardLogger, WandbLogger
from trainer.callbacks.trackers import _require
from trainer import Accelerator, Trainer
from tests.helpers import BoringModel, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.wandb_log import read_run


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    """No API key anywhere (HOME has no .netrc), W&B quiet; every test runs in its own directory."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)


class Logged(BoringModel):
    def __init__(self, width: int = 4, note: str = "x"):
        super().__init__()
        self.save_hyperparameters()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))


def _fit(loggers, epochs=2, **kwargs):
    trainer = Trainer(max_epochs=epochs, logger=loggers, enable_progress_bar=False, enable_checkpointing=False,
                      log_every_n_steps=2, num_sanity_val_steps=0, **kwargs)
    trainer.fit(Logged(width=4, note="hello"), regression_loader(32, 4), regression_loader(8, 4))
    return trainer


def _csv_series(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    series = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value != "":
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def test_tensorboard_scalars_match_what_was_logged_step_for_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, reference = TensorBoardLogger("runs"), CSVLogger("csv")
    _fit([tb, reference])
    expected = _csv_series(reference.metrics_file)
    assert set(expected) == {"train/loss", "val/loss", "epoch"} and len(expected["train/loss"]) == 8
    events = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points]
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6)  # float32 in the file
    # hyperparameters: the HPARAMS plugin's data, decoded with its own schema, and the YAML beside them
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["width"].number_value == 4 and start["note"].string_value == "hello"
    assert start["trainer/max_epochs"].number_value == 2
    hparams = open(os.path.join(tb.log_dir, "hparams.yaml")).read()
    assert "width: 4" in hparams and "note: hello" in hparams and "max_epochs: 2" in hparams


@pytest.mark.slow
def test_wandb_offline_run_holds_history_and_config(tmp_path, capsys):
    wb = WandbLogger(project="demo", save_dir="runs")
    _fit([wb])
    wb.close()
    out = capsys.readouterr().out
    runs = glob.glob("runs/wandb/offline-run-*")
    assert len(runs) == 1
    assert f"logged offline to {os.path.abspath(runs[0])}" in out
    assert "wandb sync" in out and "api_key" not in out.lower()
    record = read_run(glob.glob(f"{runs[0]}/run-*.wandb")[0])
    # the Trainer's step is the charts' x axis (W&B's own _step only counts rows), as with Lightning's logger
    losses = [(h["trainer/global_step"], h["train/loss"]) for h in record["history"] if "train/loss" in h]
    assert [s for s, _ in losses] == [1, 3, 5, 7, 9, 11, 13, 15]
    val = [(h["trainer/global_step"], h["epoch"]) for h in record["history"] if "val/loss" in h]
    assert val == [(7, 0), (15, 1)]  # after each epoch's 8 steps, at the 8th step's row (as Lightning), in that epoch
    assert sum(1 for h in record["history"] if "val/loss" in h) == 2
    assert record["config"]["width"] == 4 and record["config"]["note"] == "hello"
    assert record["config"]["trainer/max_epochs"] == 2


def test_wandb_goes_online_only_with_a_key(monkeypatch):
    assert WandbLogger()._mode() == "offline"
    with open(os.path.join(os.environ["HOME"], ".netrc"), "w") as f:
        f.write("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    assert WandbLogger()._mode() == "online"
    assert WandbLogger(offline=True)._mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger()._mode() == "disabled"


def test_mlflow_file_store_has_params_and_metrics_with_steps(tmp_path):
    from mlflow.tracking import MlflowClient

    ml, reference = MLflowLogger(experiment_name="demo", save_dir="runs"), CSVLogger("csv")
    _fit([ml, reference])
    client = MlflowClient(tracking_uri=ml.tracking_uri)
    run = client.get_run(ml.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["width"] == "4" and run.data.params["trainer/max_epochs"] == "2"
    for key, points in _csv_series(reference.metrics_file).items():
        history = client.get_metric_history(ml.run_id, key)
        assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v, rel=1e-12)) for s, v in points]
    found = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert [r.info.run_id for r in found] == [ml.run_id]


def test_mlflow_batches_rows_by_count_and_time_and_sends_the_rest_at_stage_end(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import trainer.callbacks.trackers as trackers

    clock = [1000.0]
    monkeypatch.setattr(trackers.time, "monotonic", lambda: clock[0])
    ml = MLflowLogger(save_dir="runs", flush_every=3, flush_interval=60.0)
    client = MlflowClient(tracking_uri=ml.experiment.tracking_uri)
    sent = lambda: [m.step for m in client.get_metric_history(ml.run_id, "loss")]  # noqa: E731
    for step in range(2):
        ml.log_metrics({"loss": float(step)}, step)
    assert sent() == []                      # 2 rows, 0 s: still buffered
    ml.log_metrics({"loss": 2.0}, 2)
    assert sent() == [0, 1, 2]               # the third row sends the batch
    ml.log_metrics({"loss": 3.0}, 3)
    clock[0] += 59.0
    ml.log_metrics({"loss": 4.0}, 4)
    assert sent() == [0, 1, 2]
    clock[0] += 1.0
    ml.log_metrics({"loss": 5.0}, 5)
    assert sent() == [0, 1, 2, 3, 4, 5]      # a minute since the last send
    ml.log_metrics({"loss": 6.0}, 6)
    ml.finalize("success")
    assert sent() == [0, 1, 2, 3, 4, 5, 6]   # the end of a stage sends what is left
    assert client.get_run(ml.run_id).info.status == "FINISHED"
    with pytest.raises(ValueError, match=r"flush_every=0.*expected flush_every >= 1"):
        MLflowLogger(flush_every=0)


def test_a_failed_fit_closes_the_loggers_marked_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    class Boom(Logged):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    ml, tb = MLflowLogger(save_dir="runs"), TensorBoardLogger("runs")
    trainer = Trainer(max_epochs=1, logger=[ml, tb], enable_progress_bar=False, enable_checkpointing=False,
                      log_every_n_steps=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Boom(), regression_loader(32, 4))
    assert MlflowClient(tracking_uri=ml.tracking_uri).get_run(ml.run_id).info.status == "FAILED"
    assert tb._writer is None  # closed, its events flushed
    assert glob.glob(os.path.join(tb.log_dir, "events.out.tfevents.*"))


def test_default_logger_is_tensorboard_with_a_loss_plot_and_the_run_dir_printed_once(tmp_path, capsys):
    import matplotlib.image

    trainer = _fit(None, default_root_dir="here")
    assert [type(lg).__name__ for lg in trainer.loggers] == ["TensorBoardLogger"]
    assert trainer.log_dir == os.path.join("here", "logs", "version_0")
    out = capsys.readouterr().out
    assert out.count("Logging to TensorBoardLogger in here/logs/version_0") == 1
    png = os.path.join(trainer.log_dir, "loss_curves.png")
    assert f"Loss curves: {png}" in out
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100  # a decodable picture, not an empty file


def _rank_zero_worker(root):
    os.chdir(root)
    os.environ["WANDB_SILENT"] = "true"
    trainer = _fit([TensorBoardLogger("runs"), CSVLogger("runs"), MLflowLogger(save_dir="runs"),
                    WandbLogger(save_dir="runs")], epochs=1, accelerator="cpu")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.close()
    return trainer.global_rank


@pytest.mark.slow
def test_with_two_processes_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the workers' file store here
    run_distributed(_rank_zero_worker, root=str(tmp_path))
    assert len(glob.glob(str(tmp_path / "runs" / "lightning_logs" / "*" / "events.out.tfevents.*"))) == 1
    assert len(glob.glob(str(tmp_path / "runs" / "lightning_logs" / "*" / "metrics.csv"))) == 1
    assert len(glob.glob(str(tmp_path / "runs" / "wandb" / "offline-run-*"))) == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + str(tmp_path / "runs" / "mlruns"))
    assert len(client.search_runs([client.get_experiment_by_name("default").experiment_id])) == 1


def test_accelerator_trackers_write_and_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accelerator = Accelerator(cpu=True, log_with=["tensorboard", "csv", "mlflow", "wandb"], project_dir="runs")
    accelerator.init_trackers("demo", config={"lr": 3e-4, "model": {"width": 8}})
    for step in range(1, 4):
        accelerator.log({"train_loss": torch.tensor(1.0 / step), "lr": 3e-4}, step=step)
    tb = accelerator.get_tracker("tensorboard")
    assert accelerator.get_tracker("tensorboard", unwrap=True) is tb.experiment
    ml, csv_logger = accelerator.get_tracker("mlflow"), accelerator.get_tracker("csv")
    wandb_dir = accelerator.get_tracker("wandb").log_dir
    accelerator.end_training()
    events = EventAccumulator(tb.log_dir)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert _csv_series(csv_logger.metrics_file)["train_loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=ml.tracking_uri)
    assert client.get_run(ml.run_id).data.params == {"lr": "0.0003", "model/width": "8"}
    assert [m.step for m in client.get_metric_history(ml.run_id, "train_loss")] == [1, 2, 3]
    record = read_run(glob.glob(f"{wandb_dir}/run-*.wandb")[0])
    assert [h["train_loss"] for h in record["history"]] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert record["config"]["model/width"] == 8


def test_accelerator_all_is_every_installed_tracker():
    accelerator = Accelerator(cpu=True, log_with="all", project_dir="runs")
    assert accelerator._tracker_specs == ["tensorboard", "wandb", "mlflow", "csv"]


@pytest.mark.parametrize("value, error, match", [
    (torch.ones(3), ValueError, r"'bad' is a tensor of shape \(3,\); trackers take scalars"),
    ("text", TypeError, r"'bad' is str 'text'; trackers take numbers"),
])
def test_accelerator_log_names_the_bad_key_and_its_shape(value, error, match):
    accelerator = Accelerator(cpu=True, log_with="csv", project_dir="runs")
    accelerator.init_trackers("demo")
    with pytest.raises(error, match=match):
        accelerator.log({"ok": 1.0, "bad": value})


def test_get_tracker_of_a_tracker_not_started_lists_the_started_ones():
    accelerator = Accelerator(cpu=True, log_with="csv", project_dir="runs")
    accelerator.init_trackers("demo")
    with pytest.raises(ValueError, match=r"get_tracker\('wandb'\): no such tracker.*\['CSVLogger'\]"):
        accelerator.get_tracker("wandb")


def test_a_missing_package_names_the_extra_to_install():
    with pytest.raises(ImportError, match=r"WandbLogger needs the 'wandb' package.*pip install 'trainer\[wandb\]'"):
        _require("a_package_that_is_not_installed", "wandb", "WandbLogger")


def test_loggers_are_imported_lazily():
    import subprocess
    import sys

    code = ("import sys, trainer, trainer.callbacks as callbacks; "
            "t = trainer.Trainer(logger=[callbacks.WandbLogger(), "
            "callbacks.MLflowLogger(), callbacks.TensorBoardLogger()]); "
            "print(sorted(m for m in ('wandb', 'mlflow', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"  # after the status line saying which precision was chosen
