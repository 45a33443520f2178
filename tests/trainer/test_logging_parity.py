"""Logging and the training loop as Lightning users rely on them (issue 24): a training metric a callback
monitors is current when it decides, values logged in on_train_start reach the loggers, logger rows sit on
Lightning's x axis (first step at 0, `epoch` in every row), and the loop's Lightning-compatible entry points."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from tests.helpers.models import BoringModel, regression_loader
from trainer import Trainer, TrainModule
from trainer.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, TensorBoardLogger


def _rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(logger.metrics_file, newline="") as f:
        return list(csv.DictReader(f))


class StepLosses(BoringModel):
    """Logs `train_loss` per step (Lightning's default in training_step) and remembers each value."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss


# -- point 1: a monitored training metric is current when a callback decides -------------------------------

class SeesAtValidationEnd(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.seen.append((trainer.global_step, trainer.callback_metrics["train_loss"]))


@pytest.mark.parametrize("batches, log_every", [(4, 50), (7, 3), (6, 3)])
def test_a_callback_at_validation_end_sees_the_last_steps_training_value(make_trainer, batches, log_every):
    seen = SeesAtValidationEnd()
    stopper = EarlyStopping(monitor="train_loss", patience=100)  # failed with MissingMetricError when log_every > batches
    trainer = make_trainer(max_epochs=2, log_every_n_steps=log_every, callbacks=[seen, stopper],
                           num_sanity_val_steps=0)
    model = StepLosses()
    trainer.fit(model, regression_loader(8 * batches, 8), regression_loader(16, 8))
    assert [step for step, _ in seen.seen] == [batches, 2 * batches]
    assert [value for _, value in seen.seen] == [pytest.approx(model.losses[batches - 1], rel=1e-6),
                                                 pytest.approx(model.losses[-1], rel=1e-6)]
    assert stopper.best_score == pytest.approx(min(v for _, v in seen.seen), rel=1e-6)


def test_model_checkpoint_ranks_by_the_training_value_of_the_step_it_saves(make_trainer, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_loss", save_top_k=1,
                                 filename="{epoch}-{train_loss:.6f}")
    trainer = make_trainer(max_epochs=3, log_every_n_steps=50, callbacks=[checkpoint])
    model = StepLosses()
    trainer.fit(model, regression_loader(24, 8))  # 3 steps an epoch, no validation: saves at epoch ends
    epoch_ends = [model.losses[2], model.losses[5], model.losses[8]]
    best = min(range(3), key=lambda e: epoch_ends[e])
    assert checkpoint.best_model_score == pytest.approx(epoch_ends[best], rel=1e-6)
    assert os.path.basename(checkpoint.best_model_path) == f"epoch={best}-train_loss={epoch_ends[best]:.6f}.ckpt"


def test_reading_between_log_intervals_gives_each_steps_value_but_no_logger_row(make_trainer):
    class ReadsEveryStep(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []
            self.logged: list[bool] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.values.append(trainer.callback_metrics["train_loss"])
            self.logged.append("train_loss" in trainer.logged_metrics)

    reader = ReadsEveryStep()
    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[reader], logger=logger)
    model = StepLosses()
    trainer.fit(model, regression_loader(64, 8))
    assert reader.values == [pytest.approx(v, rel=1e-6) for v in model.losses]
    # the first row is written after step 4's on_train_batch_end (as in Lightning)
    assert reader.logged == [False, False, False, False, True, True, True, True]
    assert [r["step"] for r in _rows(logger) if r["train_loss"]] == ["3", "7"]  # rows only at the intervals


def test_an_unread_run_keeps_its_values_on_the_device_until_the_interval(make_trainer):
    """Nobody reads callback_metrics: the loop itself resolves nothing between log intervals."""
    pending: list[bool] = []

    class Peeks(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            pending.append(module._results.has_pending())

    trainer = make_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[Peeks()])
    trainer.fit(StepLosses(), regression_loader(64, 8))
    # read back after steps 4 and 8 only
    assert pending == [False, True, True, True, False, True, True, True]


# -- point 3: self.log in on_train_start -------------------------------------------------------------------

def test_a_value_logged_in_on_train_start_reaches_the_logger_once(make_trainer):
    class LogsAtStart(BoringModel):
        def on_train_start(self):
            self.log("start_value", 123.0)

    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, logger=logger)
    trainer.fit(LogsAtStart(), regression_loader(16, 8))
    rows = [r for r in _rows(logger) if r["start_value"]]
    assert [(r["step"], r["epoch"], float(r["start_value"])) for r in rows] == [("1", "0", 123.0)]
    assert trainer.logged_metrics["start_value"] == 123.0


def test_epoch_level_hooks_default_to_epoch_values(make_trainer):
    class Counts(Callback):
        def on_train_epoch_start(self, trainer, module):
            module.log("epoch_start", float(trainer.current_epoch))

    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, callbacks=[Counts()])
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert trainer.callback_metrics["epoch_start"] == 1.0
    assert "epoch_start_step" not in trainer.callback_metrics


# -- point 14: rows on Lightning's x axis ------------------------------------------------------------------

class Foo(BoringModel):
    def training_step(self, batch, batch_idx):
        self.log("foo", float(batch_idx), on_step=True, on_epoch=True)
        return super().training_step(batch, batch_idx)


def test_tensorboard_rows_start_at_step_zero_and_carry_the_epoch(make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger("tb", version=0)
    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, logger=logger)
    trainer.fit(Foo(), regression_loader(16, 8))  # 2 steps an epoch
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["foo_step"] == [(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0)]
    assert scalars["foo_epoch"] == [(1, 0.5), (3, 0.5)]
    # one `epoch` point per row: four step rows and two epoch rows
    assert sorted(scalars["epoch"]) == [(0, 0.0), (1, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (3, 1.0)]
    assert "epoch" not in trainer.logged_metrics


def test_manual_optimization_rows_count_batches_not_optimizer_steps(make_trainer):
    class TwoOptimizers(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.other = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            for opt, layer in zip(self.optimizers(), (self.layer, self.other)):
                loss = torch.nn.functional.mse_loss(layer(x), y)
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            self.log("loss", loss)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.other.parameters(), lr=0.1)]

    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=1, log_every_n_steps=2, logger=logger)
    trainer.fit(TwoOptimizers(), regression_loader(48, 8))  # 6 batches, 12 optimizer steps
    assert trainer.global_step == 12
    assert [r["step"] for r in _rows(logger) if r["loss"]] == ["1", "3", "5"]  # after batches 2, 4, 6
