"""Logger writes run on each logger's background writer thread, never on the training thread: the rows
the files hold are the ones the loggers were handed (read back with each tool's own reader), in order; a
write that blocks does not hold training up; a write that raises reaches the user."""

from __future__ import annotations

import copy
import csv
import pickle
import threading

import pytest
import torch

from tests.helpers import BoringModel, regression_loader
from trainer import Trainer
from trainer.callbacks import Callback, CSVLogger, Logger, MLflowLogger, TensorBoardLogger
from trainer.callbacks.logger import BackgroundWriter


@pytest.fixture(autouse=True)
def _in_tmp(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


class Logged(BoringModel):
    def __init__(self, width: int = 4):
        super().__init__()
        self.save_hyperparameters()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))


class Recording(Logger):
    """Records the thread and the arguments of every call; ``gate``: each write waits for it first."""

    def __init__(self, gate: threading.Event | None = None, fail_at_step: int | None = None,
                 fail_on_last_validation: bool = False) -> None:
        super().__init__("runs", "recording")
        self.gate, self.fail_at_step, self.fail_on_last_validation = gate, fail_at_step, fail_on_last_validation
        self.calls: list[tuple[str, str, object]] = []  # (method, thread name, payload)
        self.gate_waits: list[bool] = []
        self.finalized: list[str] = []

    def log_metrics(self, metrics, step):
        if self.gate is not None:
            self.gate_waits.append(self.gate.wait(timeout=30))
            self.gate.set()  # a write that timed out (on the training thread) does not make the next ones wait
        if step == self.fail_at_step or (self.fail_on_last_validation and "val/loss" in metrics
                                         and metrics.get("epoch") == 1):
            raise ConnectionError(f"tracker unreachable at step {step}")
        self.calls.append(("log_metrics", threading.current_thread().name, (step, dict(metrics))))

    def log_hyperparams(self, params):
        self.calls.append(("log_hyperparams", threading.current_thread().name, dict(params)))

    def finalize(self, status):
        self.finalized.append(status)


def _trainer(loggers, epochs=2, callbacks=(), **kwargs):
    return Trainer(max_epochs=epochs, logger=loggers, enable_progress_bar=False, enable_checkpointing=False,
                   log_every_n_steps=2, num_sanity_val_steps=0, callbacks=list(callbacks), **kwargs)


def test_every_write_runs_on_the_writer_thread_in_the_order_handed_over():
    logger = Recording()
    trainer = _trainer([logger])
    trainer.fit(Logged(), regression_loader(32, 4), regression_loader(8, 4))
    main = threading.current_thread().name
    threads = {name for _, name, _ in logger.calls}
    assert threads == {"trainer-Recording-writer"} and main not in threads
    assert logger.calls[0][0] == "log_hyperparams" and logger.calls[0][2]["width"] == 4
    rows = [payload for method, _, payload in logger.calls if method == "log_metrics"]
    assert rows == trainer._metrics.history  # every row, in order, with the values the loop read back
    assert len(rows) == 8 + 2  # a row every 2 of the 16 steps, and a validation row per epoch
    assert all(type(v) in (float, int) for _, row in rows for v in row.values())  # read back: no tensors
    assert logger.finalized == ["success"]


def test_a_blocked_write_does_not_hold_the_training_steps_up():
    """The logger's writes wait for an event that only the end of training sets: written on the training
    thread, the first would wait until its 30 s timeout (a gate_waits entry of False)."""
    gate = threading.Event()
    steps_done = []

    class Release(Callback):
        def on_train_end(self, trainer, module):
            steps_done.append(trainer.global_step)
            gate.set()

    logger = Recording(gate=gate)
    trainer = _trainer([logger], callbacks=[Release()])
    trainer.fit(Logged(), regression_loader(32, 4), regression_loader(8, 4))
    assert steps_done == [16]  # every step trained while the writes waited
    assert logger.gate_waits and all(logger.gate_waits)  # each write was released, none timed out
    assert [p for m, _, p in logger.calls if m == "log_metrics"] == trainer._metrics.history  # none lost


def test_a_write_that_raises_reaches_the_user_and_the_logger_is_closed_as_failed():
    logger = Recording(fail_at_step=3)
    trainer = _trainer([logger])
    with pytest.raises(ConnectionError, match="tracker unreachable at step 3") as info:
        trainer.fit(Logged(), regression_loader(32, 4), regression_loader(8, 4))
    assert any("Recording.log_metrics(step=3)" in note and "background writer thread" in note
               for note in getattr(info.value, "__notes__", [])) or not hasattr(info.value, "add_note")
    assert logger.finalized == ["failed"]
    steps = [p[0] for m, _, p in logger.calls if m == "log_metrics"]
    assert steps == [1]  # the row before the failed one was written; nothing after it


def test_a_write_error_at_the_last_row_is_raised_at_the_end_of_the_stage():
    logger = Recording(fail_on_last_validation=True)  # the last row of fit: no log call follows it
    trainer = _trainer([logger])
    with pytest.raises(ConnectionError, match="tracker unreachable"):
        trainer.fit(Logged(), regression_loader(32, 4), regression_loader(8, 4))
    assert logger.finalized == ["failed"]
    assert len([m for m, _, _ in logger.calls if m == "log_metrics"]) == len(trainer._metrics.history) - 1


def test_the_files_hold_the_rows_the_loggers_were_handed():
    """TensorBoard (EventAccumulator), MLflow (its client) and CSV (csv): every row of the run, at its step,
    written from the writer threads."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, ml, cs = TensorBoardLogger("runs"), MLflowLogger(save_dir="runs"), CSVLogger("csv")
    trainer = _trainer([tb, ml, cs])
    trainer.fit(Logged(), regression_loader(32, 4), regression_loader(8, 4))
    expected: dict[str, list[tuple[int, float]]] = {}
    for step, row in trainer._metrics.history:
        for key, value in row.items():
            expected.setdefault(key, []).append((step, value))
    assert set(expected) == {"train/loss", "val/loss", "epoch"}

    events = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    client = MlflowClient(tracking_uri=ml.tracking_uri)
    with open(cs.metrics_file) as f:
        csv_rows = list(csv.DictReader(f))
    for key, points in expected.items():
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(key)] == points
        assert [(m.step, m.value) for m in client.get_metric_history(ml.run_id, key)] == points
        assert [(int(r["step"]), float(r[key])) for r in csv_rows if r[key] != ""] == points
    assert [int(r["step"]) for r in csv_rows] == [step for step, _ in trainer._metrics.history]  # in order


def test_lr_monitor_rows_keep_their_place_among_the_loops_rows():
    from trainer.callbacks import LearningRateMonitor

    logger = Recording()
    trainer = _trainer([logger], callbacks=[LearningRateMonitor()], epochs=1)
    trainer.fit(Logged(), regression_loader(32, 4))
    rows = [p for m, name, p in logger.calls if m == "log_metrics"]
    assert {name for m, name, _ in logger.calls} == {"trainer-Recording-writer"}
    lr_steps = [step for step, row in rows if "lr-SGD" in row]
    assert lr_steps == [0, 2, 4, 6] and [s for s, _ in rows] == sorted(s for s, _ in rows)


def test_a_copied_or_pickled_logger_gets_an_idle_writer_of_its_own():
    logger = CSVLogger("runs")
    logger.enqueue_metrics({"a": 1.0}, 0)
    logger.flush_writes()
    for other in (copy.deepcopy(logger), pickle.loads(pickle.dumps(logger))):
        assert other.background_writer is not logger.background_writer and not other.background_writer.busy
        other.enqueue_metrics({"a": 2.0}, 1)
        other.flush_writes()
    assert [row["a"] for row in logger._rows] == [1.0]


def test_the_writer_thread_ends_when_idle_and_starts_again_on_the_next_write():
    writer = BackgroundWriter("idle")
    writer.IDLE_SECONDS = 0.05
    seen = []
    writer.submit(seen.append, "append", 1)
    writer.wait()
    first = writer.thread
    first.join(timeout=10) if first is not None else None
    assert writer.thread is None
    writer.submit(seen.append, "append", 2)
    writer.wait()
    assert seen == [1, 2]


def test_the_accelerators_trackers_write_on_their_writer_thread_and_end_training_waits():
    from trainer import Accelerator

    gate = threading.Event()
    logger = Recording(gate=gate)
    accelerator = Accelerator(cpu=True, log_with=[logger])
    accelerator.init_trackers("demo", config={"lr": 0.1})
    for step in range(3):
        accelerator.log({"loss": torch.tensor(1.0 / (step + 1))}, step=step)  # returns while the writes wait
    assert "log_metrics" not in [m for m, _, _ in logger.calls]  # all three wait on the writer thread
    gate.set()
    accelerator.end_training()
    assert logger.gate_waits == [True, True, True] and logger.finalized == ["success"]
    assert logger.calls[0] == ("log_hyperparams", "trainer-Recording-writer", {"lr": 0.1})
    assert [p for m, _, p in logger.calls if m == "log_metrics"] == [(0, {"loss": 1.0}), (1, {"loss": 0.5}),
                                                                     (2, {"loss": pytest.approx(1 / 3)})]
    assert {name for _, name, _ in logger.calls} == {"trainer-Recording-writer"}
