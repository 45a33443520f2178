"""Callbacks: the base class and its dispatch, errors raised in hooks, EarlyStopping, the progress
bar and the learning-rate monitor."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st

from trainer.callbacks import (Callback, CSVLogger, EarlyStopping, EarlyStoppingReason, LearningRateMonitor,
                               MissingMetricError, ProgressBar)
from trainer.callbacks.base import HOOK_NAMES
from trainer.strategies import SingleDeviceStrategy
from trainer import Trainer, TrainModule
from tests.helpers import BoringModel, regression_loader

EVERY_HOOK = {
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_exception",
    "on_sanity_check_start", "on_sanity_check_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end",
    "on_save_checkpoint", "on_load_checkpoint",
}


# -- the base class and dispatch ----------------------------------------------------------------------

def test_callback_base_has_every_hook_and_the_module_has_the_same_names():
    assert set(HOOK_NAMES) == EVERY_HOOK
    for name in EVERY_HOOK:
        assert callable(getattr(Callback, name)), name
        assert callable(getattr(TrainModule, name)), name


def test_callback_base_hooks_do_nothing_and_state_is_empty():
    cb = Callback()
    assert cb.on_train_batch_end(None, None, None, None, 0) is None
    assert cb.setup(None, None, "fit") is None
    assert cb.state_dict() == {}
    assert cb.load_state_dict({"anything": 1}) is None
    assert cb.state_key == "Callback"

    class Mine(Callback):
        pass

    assert Mine().state_key == "test_callback_base_hooks_do_nothing_and_state_is_empty.<locals>.Mine"


def test_dispatch_skips_hooks_a_callback_did_not_override(monkeypatch, make_trainer):
    """The base's no-op is replaced by one that raises: a dispatcher that called every hook of
    every callback would hit it; hooks that are not overridden must never be called."""

    def must_not_run(self, *args):
        raise AssertionError("a hook the callback does not override was called")

    for name in EVERY_HOOK - {"on_train_epoch_end"}:
        monkeypatch.setattr(Callback, name, must_not_run)

    class OnlyEpochEnd(Callback):
        def __init__(self):
            self.epochs = []

        def on_train_epoch_end(self, trainer, module):
            self.epochs.append(trainer.current_epoch)

    cb = OnlyEpochEnd()
    trainer = make_trainer(max_epochs=2, callbacks=[cb])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(16, 8))
    trainer.validate(BoringModel(), regression_loader(16, 8))
    trainer.predict(BoringModel(), regression_loader(16, 8))
    assert cb.epochs == [0, 1]


def test_callbacks_receive_the_trainer_and_the_module(make_trainer):
    seen = []

    class Look(Callback):
        def on_train_start(self, trainer, module):
            seen.append((trainer, module))

    model = BoringModel()
    trainer = make_trainer(max_epochs=1, callbacks=Look())  # a single callback is accepted too
    trainer.fit(model, regression_loader(16, 8))
    assert seen == [(trainer, model)]


def test_setting_should_stop_in_a_callback_stops_after_that_step(make_trainer):
    class StopAt(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                trainer.should_stop = True

    trainer = make_trainer(max_epochs=5, callbacks=[StopAt()])
    trainer.fit(BoringModel(), regression_loader(16, 8))
    # stopped after the first batch of epoch 1: that epoch is not completed
    assert (trainer.global_step, trainer.current_epoch, trainer.should_stop) == (3, 1, True)


# -- errors raised in hooks ------------------------------------------------------------------------------

class Boom(Callback):
    def __init__(self, hook: str, when: int = 0) -> None:
        self.hook, self.when = hook, when
        self.exceptions: list[BaseException] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.hook == "on_train_batch_end" and batch_idx == self.when:
            raise RuntimeError("boom")

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if self.hook == "on_validation_batch_start" and not trainer.sanity_checking and batch_idx == self.when:
            raise KeyError("boom")

    def on_train_epoch_end(self, trainer, module):
        if self.hook == "on_train_epoch_end" and trainer.current_epoch == self.when:
            raise ValueError("boom")

    def on_exception(self, trainer, module, exception):
        self.exceptions.append(exception)


@pytest.mark.parametrize("hook, when, error, note", [
    ("on_train_batch_end", 2, RuntimeError,
     "raised in callback Boom.on_train_batch_end at global_step 3 (epoch 0, batch_idx 2, stage 'fit')"),
    ("on_train_epoch_end", 1, ValueError,
     "raised in callback Boom.on_train_epoch_end at global_step 8 (epoch 1, batch_idx 4, stage 'fit')"),
    ("on_validation_batch_start", 1, KeyError,
     "raised in callback Boom.on_validation_batch_start at global_step 4 (epoch 0, batch_idx 1, stage 'fit')"),
])
def test_error_in_a_callback_hook_is_reraised_with_a_note(hook, when, error, note, make_trainer):
    boom = Boom(hook, when)
    trainer = make_trainer(max_epochs=2, callbacks=[boom])
    with pytest.raises(error, match="boom") as info:
        trainer.fit(BoringModel(), regression_loader(32, 8), regression_loader(32, 8))
    assert info.value.__notes__ == [note]
    assert boom.exceptions == [info.value]  # on_exception saw the same exception object


def test_error_in_a_module_hook_names_the_module(make_trainer):
    class Bad(BoringModel):
        def on_train_batch_start(self, batch, batch_idx):
            if batch_idx == 1:
                raise ZeroDivisionError("module hook")

    with pytest.raises(ZeroDivisionError, match="module hook") as info:
        make_trainer(max_epochs=1).fit(Bad(), regression_loader(32, 8))
    assert info.value.__notes__ == [
        "raised in Bad (the TrainModule).on_train_batch_start at global_step 1 (epoch 0, batch_idx 1, stage 'fit')"]


def test_error_in_a_later_callback_stops_the_ones_after_it(make_trainer):
    calls = []

    class First(Callback):
        def on_train_start(self, trainer, module):
            calls.append("first")

    class Raises(Callback):
        def on_train_start(self, trainer, module):
            raise RuntimeError("second")

    class Third(Callback):
        def on_train_start(self, trainer, module):
            calls.append("third")

    with pytest.raises(RuntimeError, match="second") as info:
        make_trainer(max_epochs=1, callbacks=[First(), Raises(), Third()]).fit(BoringModel(), regression_loader(16, 8))
    assert calls == ["first"]
    assert info.value.__notes__ == [
        "raised in callback Raises.on_train_start at global_step 0 (epoch 0, batch_idx 0, stage 'fit')"]


# -- EarlyStopping --------------------------------------------------------------------------------------

class Scripted(BoringModel):
    """Logs ``score`` = ``scores[i]`` at the i-th validation (or training epoch, without validation)."""

    def __init__(self, scores: list[float], in_training: bool = False) -> None:
        super().__init__()
        self.scores, self.in_training = scores, in_training
        self.validations = 0

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.log("score", self.scores[self.validations])

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validations += 1

    def training_step(self, batch, batch_idx):
        if self.in_training:
            self.log("score", self.scores[self.current_epoch], on_epoch=True, on_step=False)
        return super().training_step(batch, batch_idx)


def _expected_stop(scores, mode, patience, min_delta):
    """The epoch at which early stopping fires, or None: a check improves when it beats the best
    so far by more than min_delta; patience checks in a row without improvement stop."""
    best, wait = (math.inf if mode == "min" else -math.inf), 0
    for epoch, score in enumerate(scores):
        improved = score < best - min_delta if mode == "min" else score > best + min_delta
        if improved:
            best, wait = score, 0
            continue
        wait += 1
        if wait >= patience:
            return epoch
    return None


@settings(max_examples=25, deadline=None)
@given(scores=st.lists(st.integers(0, 6), min_size=1, max_size=7), mode=st.sampled_from(["min", "max"]),
       patience=st.integers(0, 3), min_delta=st.sampled_from([0.0, 0.5, 1.5]))
def test_early_stopping_patience_and_min_delta(scores, mode, patience, min_delta, make_trainer):
    es = EarlyStopping("score", mode=mode, patience=patience, min_delta=min_delta)
    trainer = make_trainer(max_epochs=len(scores), callbacks=[es], num_sanity_val_steps=0)
    trainer.fit(Scripted([float(s) for s in scores]), regression_loader(8, 8), regression_loader(8, 8))
    stop = _expected_stop(scores, mode, patience, min_delta)
    if stop is None:
        assert (trainer.current_epoch, es.stopped_epoch, es.stopping_reason_message) == (len(scores), 0, None)
    else:
        assert (trainer.current_epoch, es.stopped_epoch, trainer.should_stop) == (stop + 1, stop, True)
        checks = max(patience, 1)  # patience=0 stops at the first check without improvement
        assert es.wait_count == checks
        assert es.stopping_reason_message.startswith(f"score did not improve by more than {min_delta} in {checks} checks")


@pytest.mark.parametrize("kwargs, scores, stop, reason", [
    ({"stopping_threshold": 2.0}, [5.0, 3.0, 1.5, 1.0], 2, "Stopping threshold reached: score = 1.5 reached the stopping threshold 2.0."),
    ({"divergence_threshold": 10.0}, [5.0, 4.0, 11.0, 3.0], 2,
     "Divergence threshold reached: score = 11 is worse than the divergence threshold 10.0."),
    ({"mode": "max", "stopping_threshold": 0.9}, [0.5, 0.95, 0.99], 1,
     "Stopping threshold reached: score = 0.95 reached the stopping threshold 0.9."),
    ({"mode": "max", "divergence_threshold": 0.1}, [0.5, 0.05, 0.99], 1,
     "Divergence threshold reached: score = 0.05 is worse than the divergence threshold 0.1."),
    ({}, [5.0, math.nan, 1.0], 1, "score = nan is not finite."),
    ({}, [5.0, math.inf, 1.0], 1, "score = inf is not finite."),
])
def test_early_stopping_thresholds_and_non_finite_values(kwargs, scores, stop, reason, make_trainer):
    es = EarlyStopping("score", patience=10, **kwargs)
    trainer = make_trainer(max_epochs=len(scores), callbacks=[es], num_sanity_val_steps=0)
    trainer.fit(Scripted(scores), regression_loader(8, 8), regression_loader(8, 8))
    assert (trainer.current_epoch, es.stopped_epoch, es.stopping_reason_message) == (stop + 1, stop, reason)


def test_early_stopping_with_check_finite_off_counts_nan_as_no_improvement(make_trainer):
    es = EarlyStopping("score", patience=2, check_finite=False)
    trainer = make_trainer(max_epochs=4, callbacks=[es], num_sanity_val_steps=0)
    trainer.fit(Scripted([5.0, math.nan, math.nan, 1.0]), regression_loader(8, 8), regression_loader(8, 8))
    assert (trainer.current_epoch, es.stopped_epoch, es.best_score) == (3, 2, 5.0)


def test_early_stopping_with_a_missing_monitor_lists_the_logged_keys(make_trainer):
    es = EarlyStopping("val/acc")
    trainer = make_trainer(max_epochs=3, callbacks=[es], log_every_n_steps=1)
    with pytest.raises(MissingMetricError, match=re.escape(
            "EarlyStopping(monitor='val/acc'): this metric was never logged. Logged metrics: "
            "['train/loss', 'val/loss']. Log it with self.log('val/acc', value) or pass strict=False")) as info:
        trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(16, 8))
    assert isinstance(info.value, KeyError)
    assert info.value.__notes__ == [
        "raised in callback EarlyStopping.on_validation_end at global_step 2 (epoch 0, batch_idx 2, stage 'fit')"]
    assert trainer.global_step == 2  # the sanity check did not trigger it; the first real validation did


def test_early_stopping_not_strict_skips_a_missing_monitor(make_trainer):
    es = EarlyStopping("val/acc", strict=False, patience=0)
    trainer = make_trainer(max_epochs=3, callbacks=[es])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(16, 8))
    assert (trainer.current_epoch, es.wait_count, es.stopping_reason_message) == (3, 0, None)


def test_early_stopping_without_validation_checks_at_train_epoch_end(make_trainer):
    es = EarlyStopping("score", patience=1)
    trainer = make_trainer(max_epochs=5, callbacks=[es])
    trainer.fit(Scripted([3.0, 2.0, 2.5, 1.0, 0.0], in_training=True), regression_loader(16, 8))
    assert (trainer.current_epoch, es.stopped_epoch, es.best_score) == (3, 2, 2.0)


def test_early_stopping_after_a_mid_epoch_validation_stops_right_there(make_trainer):
    es = EarlyStopping("score", patience=2)
    counter = []

    class Count(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            counter.append((trainer.current_epoch, batch_idx))

    trainer = make_trainer(max_epochs=5, val_check_interval=2, num_sanity_val_steps=0, callbacks=[es, Count()])
    trainer.fit(Scripted([1.0, 2.0, 3.0, 0.0, 0.0]), regression_loader(32, 8), regression_loader(8, 8))
    # validations after batches 2, 4 (epoch 0) and 6 (epoch 1, batch_idx 1): the third is the 2nd without improvement
    assert counter == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert (trainer.global_step, es.stopped_epoch, es.wait_count) == (6, 1, 2)


def test_early_stopping_check_on_train_epoch_end_ignores_mid_epoch_validations(make_trainer):
    es = EarlyStopping("score", patience=1, check_on_train_epoch_end=True)
    trainer = make_trainer(max_epochs=3, val_check_interval=2, num_sanity_val_steps=0, callbacks=[es])
    # six validations (two per epoch); the check reads the latest value at each epoch's end: 2.0, 4.0 -> stop
    trainer.fit(Scripted([9.0, 2.0, 9.0, 4.0, 0.0, 0.0]), regression_loader(32, 8), regression_loader(8, 8))
    assert (trainer.current_epoch, es.stopped_epoch, es.best_score) == (2, 1, 2.0)


def test_early_stopping_state_round_trips(make_trainer):
    es = EarlyStopping("score", patience=3)
    make_trainer(max_epochs=3, callbacks=[es], num_sanity_val_steps=0).fit(
        Scripted([2.0, 3.0, 4.0]), regression_loader(8, 8), regression_loader(8, 8))
    state = es.state_dict()
    assert state == {"wait_count": 2, "stopped_epoch": 0, "best_score": 2.0, "patience": 3, "stopping_reason": 0,
                     "stopping_reason_message": None}
    fresh = EarlyStopping("score", patience=3)
    fresh.load_state_dict(state)
    assert (fresh.wait_count, fresh.best_score, fresh.stopped_epoch) == (2, 2.0, 0)
    assert fresh.state_key == "EarlyStopping{'monitor': 'score', 'mode': 'min'}"  # Lightning's format
    # the restored state carries on: one more check without improvement stops
    assert fresh._evaluate(2.5) == (True, (EarlyStoppingReason.PATIENCE_EXHAUSTED,
                                           "score did not improve by more than 0.0 in 3 checks; best 2."))


# -- the progress bar ----------------------------------------------------------------------------------

class Constant(BoringModel):
    def training_step(self, batch, batch_idx):
        self.log("const", 1.5, prog_bar=True)
        self.log("hidden", 2.5)
        return super().training_step(batch, batch_idx)


class ConstantNoValidation(Constant):
    validation_step = None  # trained without validation data: no "validation is skipped" note (as in Lightning)


def test_progress_bar_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    # an explicit precision: the chosen one would be the first status line on stdout
    trainer = Trainer(max_epochs=2, logger=False, accelerator="cpu", enable_model_summary=False, precision="32-true")
    assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == 1
    trainer.fit(ConstantNoValidation(), regression_loader(16, 8))
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[:2] == ["epoch 0: global_step 2, const=1.5", "epoch 1: global_step 4, const=1.5"]
    assert re.fullmatch(r"Fit finished: 4 optimizer steps, 2 epochs, \d+\.\d s \(1 process\)", lines[2])
    assert lines[3].split() == ["stage", "batches", "time", "throughput"]
    assert re.fullmatch(r"  train +4 +\d+\.\d s +[\d.]+ steps/s, [\d.]+ samples/s", lines[4])
    assert re.fullmatch(r"  best checkpoint: .*epoch=1-step=4\.ckpt", lines[5])
    assert re.fullmatch(r"  final metrics: const=1\.5, hidden=2\.5, train/loss=[\d.e+-]+", lines[6])
    assert lines[7] == "  stopped: max_epochs=2 reached (4 of 4 planned optimizer steps)"
    assert len(lines) == 8 and err == ""


def test_progress_bar_draws_a_bar_with_prog_bar_metrics_when_forced(capsys):
    trainer = Trainer(max_epochs=1, logger=False, accelerator="cpu", callbacks=[ProgressBar(force=True)])
    assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == 1  # the user's, not a second one
    trainer.fit(Constant(), regression_loader(24, 8), regression_loader(8, 8))
    out, err = capsys.readouterr()
    assert "Epoch 0" in err and "3/3" in err and "const=1.5" in err
    assert "hidden" not in err
    assert "epoch 0: global_step" not in out  # the bar replaces the per-epoch line


class RankOne(SingleDeviceStrategy):
    """One device, reporting itself as rank 1 of a larger job."""

    @property
    def global_rank(self) -> int:
        return 1


@pytest.mark.parametrize("force", [False, True])
def test_progress_bar_is_silent_off_rank_zero(capsys, force):
    trainer = Trainer(max_epochs=2, logger=False, strategy=RankOne("cpu"), callbacks=[ProgressBar(force=force)])
    assert not trainer.is_global_zero
    trainer.fit(Constant(), regression_loader(16, 8), regression_loader(8, 8))
    assert trainer.global_step == 4
    assert capsys.readouterr() == ("", "")


def test_no_progress_bar_when_disabled(capsys, make_trainer):
    trainer = make_trainer(max_epochs=1, enable_model_summary=False, precision="32-true")
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
    trainer.fit(ConstantNoValidation(), regression_loader(16, 8))
    assert capsys.readouterr() == ("", "")


# -- the learning-rate monitor -------------------------------------------------------------------------

class TwoGroups(BoringModel):
    """Weight and bias in two parameter groups, halved by a scheduler every step or epoch."""

    def __init__(self, interval: str = "step", optimizer: str = "sgd") -> None:
        super().__init__()
        self.interval, self.optimizer = interval, optimizer

    def configure_optimizers(self):
        groups = [{"params": [self.layer.weight], "lr": 0.1}, {"params": [self.layer.bias], "lr": 0.01}]
        if self.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        else:
            opt = torch.optim.Adam(groups, betas=(0.8, 0.99))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}


def _read_rows(logger: CSVLogger) -> tuple[list[str], list[dict[str, str]]]:
    with open(logger.metrics_file, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _lr_rows(rows: list[dict[str, str]], *columns: str) -> list[tuple]:
    return [(int(r["step"]), *(float(r[c]) for c in columns)) for r in rows if r.get(columns[0])]


def test_lr_monitor_logs_each_param_group_per_step(make_trainer):
    logger = CSVLogger("logs", name="lr", version=0)
    monitor = LearningRateMonitor(logging_interval="step")
    trainer = make_trainer(max_epochs=1, logger=logger, log_every_n_steps=1, callbacks=[monitor])
    trainer.fit(TwoGroups("step"), regression_loader(24, 8))
    columns, rows = _read_rows(logger)
    assert {"step", "lr-SGD/pg1", "lr-SGD/pg2"} <= set(columns)
    assert _lr_rows(rows, "lr-SGD/pg1", "lr-SGD/pg2") == [
        (0, 0.1, 0.01), (1, 0.05, 0.005), (2, 0.025, 0.0025)]
    assert monitor.lrs == {"lr-SGD/pg1": [0.1, 0.05, 0.025], "lr-SGD/pg2": [0.01, 0.005, 0.0025]}


def test_lr_monitor_per_epoch_with_momentum(make_trainer):
    logger = CSVLogger("logs", name="lr", version=0)
    monitor = LearningRateMonitor(logging_interval="epoch", log_momentum=True)
    trainer = make_trainer(max_epochs=3, logger=logger, callbacks=[monitor])
    trainer.fit(TwoGroups("epoch"), regression_loader(16, 8))
    _, rows = _read_rows(logger)
    assert _lr_rows(rows, "lr-SGD/pg1", "lr-SGD/pg2", "lr-SGD/pg1-momentum") == [
        (0, 0.1, 0.01, 0.9), (2, 0.05, 0.005, 0.9), (4, 0.025, 0.0025, 0.9)]


def test_lr_monitor_single_group_and_adam_betas(make_trainer):
    class OneGroup(BoringModel):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.02, betas=(0.7, 0.9))

    logger = CSVLogger("logs", name="lr", version=0)
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=2,
                       callbacks=[LearningRateMonitor(logging_interval="step", log_momentum=True)])
    trainer.fit(OneGroup(), regression_loader(16, 8))
    _, rows = _read_rows(logger)
    assert _lr_rows(rows, "lr-Adam", "lr-Adam-momentum") == [(0, 0.02, 0.7), (2, 0.02, 0.7)]


def test_lr_monitor_uses_the_scheduler_configs_name_and_the_param_groups_names(make_trainer):
    """Lightning's keys: an lr_scheduler config's "name", a param group's "name"; the dict's "name" was
    accepted and dropped (the rate went to lr-SGD)."""
    class Named(BoringModel):
        def configure_optimizers(self):
            opt = torch.optim.SGD([{"params": [self.layer.weight], "name": "weight"},
                                   {"params": [self.layer.bias], "name": "bias"}], lr=0.1, momentum=0.9)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5), "name": "lr/main"}}

    logger = CSVLogger("logs", name="lr", version=0)
    monitor = LearningRateMonitor(logging_interval="epoch", log_momentum=True)
    make_trainer(max_epochs=2, logger=logger, callbacks=[monitor]).fit(Named(), regression_loader(8, 8))
    assert monitor.lrs == {"lr/main/weight": [0.1, 0.05], "lr/main/bias": [0.1, 0.05]}
    _, rows = _read_rows(logger)
    assert _lr_rows(rows, "lr/main/weight", "lr/main/bias-momentum") == [(0, 0.1, 0.9), (1, 0.05, 0.9)]


def test_lr_monitor_logs_weight_decay_under_lightnings_key(make_trainer):
    class Decayed(BoringModel):
        def configure_optimizers(self):
            return torch.optim.AdamW([{"params": [self.layer.weight], "weight_decay": 0.05},
                                      {"params": [self.layer.bias], "weight_decay": 0.0}], lr=0.02)

    logger = CSVLogger("logs", name="lr", version=0)
    monitor = LearningRateMonitor(logging_interval="epoch", log_weight_decay=True)
    make_trainer(max_epochs=2, logger=logger, callbacks=[monitor]).fit(Decayed(), regression_loader(8, 8))
    _, rows = _read_rows(logger)
    assert _lr_rows(rows, "lr-AdamW/pg1", "lr-AdamW/pg1-weight_decay", "lr-AdamW/pg2-weight_decay") == [
        (0, 0.02, 0.05, 0.0), (1, 0.02, 0.05, 0.0)]
    assert monitor.lrs == {"lr-AdamW/pg1": [0.02, 0.02], "lr-AdamW/pg2": [0.02, 0.02]}  # rates only
    columns, _ = _read_rows(logger)
    assert not any(c.endswith("-momentum") for c in columns)  # only what was asked for


def test_lr_monitor_default_interval_logs_once_per_step_even_at_epoch_start(make_trainer):
    logger = CSVLogger("logs", name="lr", version=0)
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[LearningRateMonitor()])
    trainer.fit(TwoGroups("epoch"), regression_loader(16, 8))
    _, rows = _read_rows(logger)
    assert _lr_rows(rows, "lr-SGD/pg1") == [(0, 0.1), (1, 0.1), (2, 0.05), (3, 0.05)]
