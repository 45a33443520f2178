"""ThroughputMonitor, DeviceStatsMonitor, Timer and the end-of-fit summary, on real runs."""

from __future__ import annotations

import csv
import datetime
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import CSVLogger, DeviceStatsMonitor, ModelCheckpoint, ThroughputMonitor, Timer
from trainer.callbacks.monitors import peak_flops
from trainer import Trainer, TrainModule
from tests.helpers import BoringModel, regression_loader


class Counted(TrainModule):
    """A single bias-free Linear; each sample carries 3 "items" (tokens)."""

    def __init__(self, sleep: float = 0.0):
        super().__init__()
        self.layer = torch.nn.Linear(8, 4, bias=False)
        self.sleep = sleep

    def training_step(self, batch, batch_idx):
        (x,) = batch
        if self.sleep:
            time.sleep(self.sleep)
        loss = self.layer(x).pow(2).sum()
        return {"loss": loss, "num_items": torch.tensor(3 * len(x))}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _loader(n=48, batch=4):
    return DataLoader(TensorDataset(torch.randn(n, 8)), batch_size=batch)


def _rows(logger):
    with open(logger.metrics_file) as f:
        return list(csv.DictReader(f))


def test_throughput_rates_agree_with_batch_size_and_items(tmp_path):
    monitor, logger = ThroughputMonitor(), CSVLogger(tmp_path)
    trainer = Trainer(max_epochs=1, logger=logger, callbacks=[monitor], log_every_n_steps=3,
                      enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(Counted(sleep=0.002), _loader())
    rows = [r for r in _rows(logger) if r.get("throughput/samples_per_sec")]
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    for row in rows:
        samples, batches = float(row["throughput/samples_per_sec"]), float(row["throughput/batches_per_sec"])
        assert samples == pytest.approx(4 * batches) and 0 < samples < 4 / 0.002
        assert float(row["throughput/items_per_sec"]) == pytest.approx(3 * samples)
        assert "throughput/flops_per_sec" not in row or row["throughput/flops_per_sec"] == ""


def test_measured_flops_of_a_linear_layer_and_the_flops_rate(tmp_path):
    monitor = ThroughputMonitor(measure_flops=True)
    trainer = Trainer(max_steps=4, logger=CSVLogger(tmp_path), callbacks=[monitor], log_every_n_steps=2,
                      enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(Counted(), _loader())
    # forward x @ W.T: 2*in*out per sample; backward (the input needs no gradient): dW, another 2*in*out
    assert monitor.flops_per_sample == 4 * 8 * 4
    assert monitor.last["throughput/flops_per_sec"] == pytest.approx(128 * monitor.last["throughput/samples_per_sec"])
    assert "throughput/mfu" not in monitor.last  # no known peak for a CPU


def test_peak_table_matches_device_names():
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16-mixed") == 312e12
    assert peak_flops("NVIDIA L40S", "16-mixed") == 362e12 and peak_flops("NVIDIA L4", "32-true") == 30.3e12
    assert peak_flops("Some CPU", "32-true") is None


@pytest.mark.parametrize("bad", [0, -1.0, "many"])
def test_a_bad_flops_hint_is_refused(bad):
    with pytest.raises(ValueError, match=r"flops_per_sample=.*expected a positive number"):
        ThroughputMonitor(flops_per_sample=bad)


def test_device_stats_log_resident_memory(tmp_path):
    logger = CSVLogger(tmp_path)
    Trainer(max_steps=4, logger=logger, callbacks=[DeviceStatsMonitor()], log_every_n_steps=2,
            enable_progress_bar=False, enable_checkpointing=False).fit(Counted(), _loader())
    rows = [r for r in _rows(logger) if r.get("device_stats/cpu_rss_mb")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for row in rows:
        assert 10 < float(row["device_stats/cpu_rss_mb"]) <= float(row["device_stats/cpu_peak_rss_mb"]) + 1


def test_timer_stops_fit_after_its_duration_and_times_stages():
    timer = Timer(duration={"seconds": 0.3})
    trainer = Trainer(max_epochs=100, logger=False, callbacks=[timer], enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(Counted(sleep=0.02), _loader(16), _loader(8))
    assert 0 < trainer.global_step < 100 * 4
    assert 0.3 <= timer.time_elapsed("train") < 5
    assert timer.time_elapsed("validate") > 0 and timer.time_elapsed("test") == 0
    assert timer.time_remaining("train") <= 0


def test_timer_state_survives_a_checkpoint_and_the_clock_continues(tmp_path):
    first = Timer()
    trainer = Trainer(max_epochs=1, logger=False, callbacks=[first], enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(Counted(sleep=0.01), _loader(16))
    spent = first.time_elapsed("train")
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    second = Timer()
    Trainer(max_epochs=2, logger=False, callbacks=[second], enable_progress_bar=False,
            enable_checkpointing=False).fit(Counted(sleep=0.01), _loader(16), ckpt_path=tmp_path / "a.ckpt")
    assert second.time_elapsed("train") >= spent + 4 * 0.01


@pytest.mark.parametrize("duration", ["1:00", "00:01:00:00:00", {"fortnights": 1}, 12])
def test_timer_rejects_a_malformed_duration(duration):
    with pytest.raises(ValueError, match=r"Timer\(duration=.*"):
        Timer(duration=duration)


def test_timer_accepts_the_usual_spellings():
    assert Timer("01:02:03:04").duration == datetime.timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert Timer(datetime.timedelta(minutes=5)).duration.total_seconds() == 300
    assert Timer({"hours": 1}).duration.total_seconds() == 3600


def test_end_of_fit_summary_table_once(tmp_path, capsys):
    class Validated(BoringModel):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))

    trainer = Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path,
                      callbacks=[ModelCheckpoint(monitor="val/loss")])
    trainer.fit(Validated(), regression_loader(32, 4), regression_loader(8, 4))
    out = capsys.readouterr().out
    assert out.count("Fit finished: 16 optimizer steps, 2 epochs") == 1
    lines = out[out.index("Fit finished"):].splitlines()
    assert lines[1].split() == ["stage", "batches", "time", "throughput"]
    assert lines[2].split()[:2] == ["train", "16"] and "samples/s" in lines[2]
    assert lines[3].split()[:2] == ["validate", "4"]  # two epochs of 2 batches; the sanity check not counted
    assert f"best checkpoint: {trainer.checkpoint_callback.best_model_path} (val/loss=" in out
    assert "final metrics: " in out and "val/loss=" in out
