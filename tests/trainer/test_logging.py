"""``self.log``: epoch values weighted by batch size, reduce_fx, step/epoch naming, what reaches
callback_metrics, the progress bar and the CSV logger's file."""

from __future__ import annotations

import csv
import os
import warnings

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import CSVLogger
from trainer import Trainer
from tests.helpers import BoringModel, regression_loader


class Logs(BoringModel):
    """Logs ``value(batch_idx)`` as ``name`` with ``log_kwargs`` in training and/or validation."""

    def __init__(self, name="v", value=lambda i: float(i + 1), where=("train", "val"), **log_kwargs) -> None:
        super().__init__()
        self.name, self.value, self.where, self.log_kwargs = name, value, where, log_kwargs
        self.step_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.step_losses.append(loss.item())
        if "train" in self.where:
            self.log(self.name, torch.tensor(self.value(batch_idx)), **self.log_kwargs)
        return loss

    def validation_step(self, batch, batch_idx):
        if "val" in self.where:
            self.log(self.name, torch.tensor(self.value(batch_idx)), **self.log_kwargs)


UNEVEN = (10, 4)  # 10 samples in batches of 4, 4, 2; value i+1 in batch i: 1, 2, 3


def _uneven() -> DataLoader:
    return regression_loader(*UNEVEN)


# -- epoch values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduce_fx, expected", [
    ("mean", (1 * 4 + 2 * 4 + 3 * 2) / 10),   # weighted by batch size: 1.8, not 2.0
    ("sum", 1 + 2 + 3),
    ("max", 3.0),
    ("min", 1.0),
    (torch.max, 3.0),
    (max, 3.0),
    (torch.sum, 6.0),
    (lambda values: values.median(), 2.0),
])
def test_validation_epoch_value_of_each_reduce_fx(reduce_fx, expected, make_trainer):
    result = make_trainer().validate(Logs(reduce_fx=reduce_fx, where=("val",)), _uneven())
    assert result == [{"v": pytest.approx(expected, rel=1e-12)}]


@pytest.mark.parametrize("reduce_fx, expected", [("mean", 1.8), ("sum", 6.0), ("max", 3.0), ("min", 1.0)])
def test_training_epoch_value_of_each_reduce_fx(reduce_fx, expected, make_trainer):
    trainer = make_trainer(max_epochs=1)
    trainer.fit(Logs(reduce_fx=reduce_fx, on_step=False, on_epoch=True, where=("train",)), _uneven())
    assert trainer.callback_metrics["v"] == pytest.approx(expected, rel=1e-12)
    assert trainer.logged_metrics["v"] == pytest.approx(expected, rel=1e-12)
    assert "v_step" not in trainer.callback_metrics and "v_epoch" not in trainer.callback_metrics


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 23), batch_size=st.integers(1, 7), log_every=st.integers(1, 3))
def test_epoch_mean_is_weighted_by_batch_size(n, batch_size, log_every, make_trainer):
    """Whatever the split into batches (and when values are read back), the epoch mean of a
    per-batch mean equals the mean over every sample."""
    values = torch.arange(n, dtype=torch.float64) * 0.37 + 1.0
    loader = DataLoader(TensorDataset(values), batch_size=batch_size)

    class MeanOfBatch(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("m", batch[0].mean(), on_step=False, on_epoch=True)
            return self.layer.weight.sum() * 0.0 + self.layer.bias.sum() * 0.0 + 1.0

        def validation_step(self, batch, batch_idx):
            self.log("m", batch[0].mean())

    trainer = make_trainer(max_epochs=1, log_every_n_steps=log_every)
    trainer.fit(MeanOfBatch(), loader)
    assert trainer.callback_metrics["m"] == pytest.approx(values.mean().item(), rel=1e-12)
    assert trainer.validate(MeanOfBatch(), loader) == [{"m": pytest.approx(values.mean().item(), rel=1e-12)}]


def test_batch_size_argument_overrides_the_inferred_size(make_trainer):
    result = make_trainer().validate(Logs(batch_size=1, where=("val",)), _uneven())
    assert result == [{"v": pytest.approx(2.0, rel=1e-12)}]


def test_sync_dist_on_one_process_keeps_the_value(make_trainer):
    result = make_trainer().validate(Logs(sync_dist=True, where=("val",)), _uneven())
    assert result == [{"v": pytest.approx(1.8, rel=1e-12)}]


def test_python_numbers_can_be_logged(make_trainer):
    result = make_trainer().validate(Logs(where=("val",), value=lambda i: i + 1), _uneven())  # ints, no tensors
    assert result == [{"v": pytest.approx(1.8, rel=1e-12)}]


# -- step and epoch naming ---------------------------------------------------------------------------------

def test_on_step_and_on_epoch_give_x_step_and_x_epoch(make_trainer):
    trainer = make_trainer(max_epochs=1, log_every_n_steps=1)
    trainer.fit(Logs(on_step=True, on_epoch=True, where=("train",)), _uneven())
    metrics = trainer.callback_metrics
    assert metrics["v_step"] == 3.0                        # the last step's value
    assert metrics["v_epoch"] == pytest.approx(1.8, rel=1e-12)
    assert metrics["v"] == metrics["v_epoch"]             # the plain name holds the epoch value after the epoch
    # `epoch` goes to the loggers' rows only, as in Lightning (test_logging_parity.py checks the rows)
    assert set(trainer.logged_metrics) == {"v_step", "v_epoch", "train/loss"}


def test_defaults_are_per_step_in_training_and_per_epoch_in_validation_and_epoch_hooks(make_trainer):
    class Defaults(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("t", float(batch_idx + 1))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self.log("w", float(batch_idx + 1))

        def on_train_epoch_end(self):
            self.log("e", 5.0)

    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(Defaults(), _uneven(), _uneven())
    metrics = trainer.callback_metrics
    assert metrics["t"] == 3.0                              # on_step only: the last value
    assert metrics["w"] == pytest.approx(1.8, rel=1e-12)    # on_epoch: weighted mean
    assert metrics["e"] == 5.0
    assert not any(k.endswith(("_step", "_epoch")) for k in metrics)


def test_step_values_reach_callback_metrics_by_the_end_of_a_short_epoch(make_trainer):
    """log_every_n_steps larger than the epoch still leaves the latest step value visible."""
    trainer = make_trainer(max_epochs=1, log_every_n_steps=50)
    model = Logs(where=("train",))
    trainer.fit(model, _uneven())
    assert trainer.callback_metrics["train/loss"] == pytest.approx(model.step_losses[-1], rel=1e-7)
    assert trainer.callback_metrics["v"] == 3.0
    assert "train/loss" not in trainer.logged_metrics   # the logger still only gets rows every 50 steps


def test_callback_and_logged_metrics_hold_0d_tensors_the_bar_floats(make_trainer):
    """As in Lightning: callback_metrics and logged_metrics hold 0-d tensors, progress_bar_metrics floats
    (and the loggers get floats)."""
    class Rows(CSVLogger):
        def log_metrics(self, metrics, step):
            self.types = {*getattr(self, "types", set()), *(type(v) for v in metrics.values())}
            super().log_metrics(metrics, step)

    logger = Rows("logs", version=0)
    trainer = make_trainer(max_epochs=1, log_every_n_steps=1, logger=logger)
    trainer.fit(Logs(on_step=True, on_epoch=True, prog_bar=True), _uneven(), _uneven())
    assert logger.types == {float, int}  # the values, and the epoch number
    assert trainer.callback_metrics and trainer.logged_metrics and trainer.progress_bar_metrics
    for metrics in (trainer.callback_metrics, trainer.logged_metrics):
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and v.is_floating_point() for v in metrics.values())
    assert all(type(v) is float for v in trainer.progress_bar_metrics.values())
    assert trainer.callback_metrics["v_epoch"] == pytest.approx(1.8, rel=1e-12)  # float64: the host's reduction


def test_prog_bar_and_logger_flags_choose_where_values_go(make_trainer):
    class Flags(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("bar", 1.0, prog_bar=True)
            self.log("quiet", 2.0, logger=False)
            self.log("both", 3.0, prog_bar=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1, log_every_n_steps=1)
    trainer.fit(Flags(), _uneven())
    assert trainer.progress_bar_metrics == {"bar": 1.0, "both_step": 3.0, "both_epoch": 3.0}  # as Lightning shows them
    assert "quiet" not in trainer.logged_metrics and trainer.callback_metrics["quiet"] == 2.0
    assert {"bar", "both_step", "both_epoch", "train/loss"} <= set(trainer.logged_metrics)


def test_logging_outside_a_run_warns_once_and_is_ignored():
    model = BoringModel()
    with pytest.warns(UserWarning, match=r"self\.log\('x', \.\.\.\) called outside trainer\.fit/validate/test: "
                                         r"ignored"):
        model.log("x", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.log("y", 2.0)  # warned once already: silent now


# -- bad values -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, error, pattern", [
    (torch.ones(3), ValueError, r"self\.log\('bad', value\): expected a scalar \(one element\), got a tensor of "
                                r"shape \(3,\)\. Reduce it first, e\.g\. value\.mean\(\)\."),
    (torch.ones(2, 2), ValueError, r"got a tensor of shape \(2, 2\)"),
    (torch.ones(0), ValueError, r"got a tensor of shape \(0,\)"),
    ("1.0", TypeError, r"`self\.log\(bad, 1\.0\)` was called with a value that cannot be logged: expected a number or a "
             r"one-element tensor, got str\."),
    ([1.0], TypeError, r"`self\.log\(bad, \[1\.0\]\)` was called .* got list\."),
    (1j, TypeError, r"`self\.log\(bad, 1j\)` was called .* got complex\."),
    (None, ValueError, r"`self\.log\(bad, None\)` was called .* got NoneType\."),  # also a ValueError, as Lightning raises
])
def test_non_scalar_value_errors_with_key_and_shape(value, error, pattern, make_trainer):
    class Bad(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("bad", value)
            return super().training_step(batch, batch_idx)

    with pytest.raises(error, match=pattern):
        make_trainer(max_epochs=1).fit(Bad(), _uneven())


def test_non_scalar_value_in_validation_names_the_suffixed_key(make_trainer):
    class Bad(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("bad", torch.ones(2) if dataloader_idx == 1 else torch.ones(()))

    with pytest.raises(ValueError, match=r"self\.log\('bad/dataloader_idx_1', value\): expected a scalar .* shape "
                                         r"\(2,\)"):
        make_trainer().validate(Bad(), [_uneven(), _uneven()])


@pytest.mark.parametrize("reduce_fx, error, pattern", [
    ("median", ValueError, r"self\.log\('v', reduce_fx='median'\): expected one of 'mean', 'sum', 'max', 'min' or "
                           r"a callable"),
    (3, TypeError, r"self\.log\('v', reduce_fx=3\): expected one of 'mean', 'sum', 'max', 'min' or a callable"),
])
def test_unknown_reduce_fx_is_refused(reduce_fx, error, pattern, make_trainer):
    with pytest.raises(error, match=pattern):
        make_trainer().validate(Logs(reduce_fx=reduce_fx, where=("val",)), _uneven())


# -- the CSV logger's file --------------------------------------------------------------------------------

def _read(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class Hyper(Logs):
    def __init__(self, width: int = 3, label: str = "x") -> None:
        super().__init__(name="t", where=("train",), on_step=False, on_epoch=True)
        self.save_hyperparameters()

    def validation_step(self, batch, batch_idx):
        return BoringModel.validation_step(self, batch, batch_idx)  # logs val/loss


def test_csv_logger_columns_and_rows(make_trainer):
    logger = CSVLogger("logs", name="exp", version=0)
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=2)
    model = Hyper(width=5)
    trainer.fit(model, regression_loader(12, 4), regression_loader(8, 4))   # 3 steps per epoch
    assert logger.metrics_file == os.path.join("logs", "exp", "version_0", "metrics.csv")
    columns, rows = _read(logger.metrics_file)
    assert columns == ["step", "train/loss", "epoch", "val/loss", "t"]
    losses = model.step_losses
    val = [r["val/loss"] for r in rows if r["val/loss"]]
    assert len(val) == 2  # the sanity check writes no row
    # the epoch value of t: batches of 4 with values 1, 2, 3 -> 2.0. Lightning's x axis: the n-th optimizer
    # step's row at step n-1, a validation in fit at the row of the batch it follows (Lightning validates before it
    # counts that batch), an epoch's at its last step row's; `epoch` in each
    expected = [
        {"step": "1", "train/loss": repr(losses[1]), "epoch": "0", "val/loss": "", "t": ""},
        {"step": "2", "train/loss": "", "epoch": "0", "val/loss": val[0], "t": ""},
        {"step": "2", "train/loss": "", "epoch": "0", "val/loss": "", "t": "2.0"},
        {"step": "3", "train/loss": repr(losses[3]), "epoch": "1", "val/loss": "", "t": ""},
        {"step": "5", "train/loss": repr(losses[5]), "epoch": "1", "val/loss": "", "t": ""},
        {"step": "5", "train/loss": "", "epoch": "1", "val/loss": val[1], "t": ""},
        {"step": "5", "train/loss": "", "epoch": "1", "val/loss": "", "t": "2.0"},
    ]
    assert rows == expected
    assert float(val[1]) == pytest.approx(float(trainer.callback_metrics["val/loss"]), rel=1e-12)
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        hparams = yaml.safe_load(f)
    assert (hparams["width"], hparams["label"]) == (5, "x")
    assert hparams["trainer"]["max_epochs"] == 2 and hparams["trainer"]["log_every_n_steps"] == 2


def test_csv_logger_step_and_epoch_columns(make_trainer):
    logger = CSVLogger("logs", name="exp", version="run")
    trainer = make_trainer(max_epochs=1, logger=logger, log_every_n_steps=1)
    trainer.fit(Logs(on_step=True, on_epoch=True, where=("train",)), _uneven())
    columns, rows = _read(os.path.join("logs", "exp", "run", "metrics.csv"))
    assert columns == ["step", "train/loss", "v_step", "epoch", "v_epoch"]
    assert [(r["step"], r["v_step"], r["v_epoch"], r["epoch"]) for r in rows] == [
        ("0", "1.0", "", "0"), ("1", "2.0", "", "0"), ("2", "3.0", "", "0"), ("2", "", "1.8", "0")]


def test_csv_logger_versions_count_up_and_test_metrics_are_written(make_trainer):
    first, second = CSVLogger("logs"), CSVLogger("logs")
    make_trainer(max_epochs=1, logger=first).fit(BoringModel(), regression_loader(8, 8))
    assert first.log_dir == os.path.join("logs", "lightning_logs", "version_0")
    result = make_trainer(logger=second).test(BoringModel(), regression_loader(16, 8))
    assert second.log_dir == os.path.join("logs", "lightning_logs", "version_1")
    columns, rows = _read(second.metrics_file)
    assert columns == ["step", "test/loss", "epoch"]
    assert [float(r["test/loss"]) for r in rows] == [pytest.approx(result[0]["test/loss"], rel=1e-12)]


def test_default_logger_is_csv_under_default_root_dir_without_tensorboard(monkeypatch):
    import trainer.callbacks.trackers as trackers

    monkeypatch.setattr(trackers, "installed", lambda name: name != "tensorboard")
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, default_root_dir="here", log_every_n_steps=1)
    assert [type(lg).__name__ for lg in trainer.loggers] == ["CSVLogger"]
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert trainer.log_dir == os.path.join("here", "logs", "version_0")
    columns, rows = _read(os.path.join(trainer.log_dir, "metrics.csv"))
    assert columns == ["step", "train/loss", "epoch"] and [r["step"] for r in rows] == ["0", "1"]


def test_logger_false_writes_nothing(tmp_path, make_trainer):
    make_trainer(max_epochs=1, logger=False, enable_checkpointing=False).fit(BoringModel(), regression_loader(16, 8))
    assert os.listdir(tmp_path) == []
    assert make_trainer(logger=False).log_dir == "runs"


def test_the_losses_between_two_flushes_live_in_one_buffer_and_the_first_non_finite_is_found():
    """record_loss writes each step's loss in place into one preallocated buffer (a list of one new
    scalar per step left small blocks between each step's large ones); the flush still
    finds the first non-finite loss and its (step, batch), past the buffer's first size and in float64."""
    import math

    from trainer.logs.results import Results

    results = Results("train")
    values = [float(i) for i in range(100)]
    values[70] = math.inf
    values[90] = math.nan
    pointers = set()
    for step, value in enumerate(values):
        results.record_loss(torch.tensor(value), global_step=step, batch_idx=step + 1000)
        pointers.add(results._loss_buffer.data_ptr())
    assert len(pointers) == 2  # 64 places, then one growth to 128 for these 100 steps: no tensor per step
    assert results.flush() == (70, 1070)
    assert results.flush() is None  # nothing pending after a flush
    for step in range(50):  # the next window reuses the buffer
        results.record_loss(torch.tensor(1.0 + step), global_step=step, batch_idx=step)
        assert results._loss_buffer.data_ptr() in pointers
    assert results.flush() is None and results.window_loss == pytest.approx(sum(1.0 + s for s in range(50)) / 50)
    big = torch.tensor(1e300, dtype=torch.float64)  # finite in float64 (float32 would make it inf)
    results.record_loss(torch.tensor(2.0), global_step=0, batch_idx=0)
    results.record_loss(big, global_step=1, batch_idx=1)
    assert results.flush() is None and results.window_loss == pytest.approx((2.0 + 1e300) / 2)


def test_recorded_losses_keep_their_values_across_shapes_dtypes_and_a_float64_buffer():
    """record_loss's common step skips the buffer checks when the loss has the dtype and device of the
    last one; a one-element loss of shape (1,), a float64 loss after float32 ones and float32 ones after
    it (into the promoted buffer) are all kept exactly, and the first non-finite one is still found."""
    import math

    from trainer.logs.results import Results

    results = Results("train")
    losses = [torch.tensor(1.5), torch.tensor([2.5]), torch.tensor(1e300, dtype=torch.float64),
              torch.tensor(0.25), torch.tensor([math.inf]), torch.tensor(3.0)]
    for step, loss in enumerate(losses):
        results.record_loss(loss, global_step=step, batch_idx=step)
    assert results._loss_buffer.dtype == torch.float64
    assert results._loss_buffer[:6].tolist() == [1.5, 2.5, 1e300, 0.25, math.inf, 3.0]
    assert results.flush() == (4, 4)
