"""Loop settings: when fit stops (max_epochs, max_steps, max_time), which batches run (limits,
fast_dev_run), when validation runs (val_check_interval, check_val_every_n_epoch, sanity check),
and what validate/test/predict return."""

from __future__ import annotations

import datetime
import math
import os
import time
import weakref
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st
from torch.utils.data import DataLoader, IterableDataset

from trainer.callbacks import Callback, CSVLogger
from trainer import Trainer
from tests.helpers import BoringModel, RandomRegression, regression_loader

SETTINGS = settings(max_examples=20, deadline=None)


class Counter(Callback):
    """Records which training batches ran, and when validation ran and on what."""

    def __init__(self) -> None:
        self.epochs_started = 0
        self.train_batches: list[tuple[int, int]] = []    # (epoch, batch_idx)
        self.val_runs: list[tuple[int, int]] = []         # (epoch, training batches done so far)
        self.val_batches: list[list[tuple[int, int]]] = []  # per run: (dataloader_idx, batch_idx)
        self.sanity_batches: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer, module):
        self.epochs_started += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.train_batches.append((trainer.current_epoch, batch_idx))

    def on_validation_start(self, trainer, module):
        if not trainer.sanity_checking:
            self.val_runs.append((trainer.current_epoch, len(self.train_batches)))
            self.val_batches.append([])

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            self.sanity_batches.append((dataloader_idx, batch_idx))
        else:
            self.val_batches[-1].append((dataloader_idx, batch_idx))


class MultiVal(BoringModel):
    """Accepts several eval dataloaders; also logs a value not tied to any dataloader."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self(x), y))

    def on_validation_epoch_end(self):
        self.log("val/extra", 7.0)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]) + dataloader_idx


def _windows(n: int, k: int) -> list[int]:
    """Micro-batches of each accumulation window of an epoch of n batches."""
    return [k] * (n // k) + ([n % k] if n % k else [])


# -- max_epochs / max_steps / max_time -------------------------------------------------------------

@SETTINGS
@given(n=st.integers(1, 5), k=st.integers(1, 3), max_steps=st.integers(1, 8),
       max_epochs=st.sampled_from([None, 1, 2, 3]))
def test_fit_stops_at_max_steps_or_max_epochs_whichever_comes_first(n, k, max_steps, max_epochs, make_trainer):
    steps = batches = epochs = started = 0
    while epochs < (max_epochs or math.inf) and steps < max_steps:
        started += 1
        windows = _windows(n, k)
        for i, window in enumerate(windows):
            batches, steps = batches + window, steps + 1
            if steps == max_steps:
                break
        if i == len(windows) - 1:  # an epoch cut short by max_steps is not counted as completed
            epochs += 1
    counter = Counter()
    trainer = make_trainer(max_steps=max_steps, max_epochs=max_epochs, accumulate_grad_batches=k, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(n * 2, 2))
    assert trainer.global_step == steps
    assert len(counter.train_batches) == batches
    assert trainer.current_epoch == epochs
    assert counter.epochs_started == started


def test_max_epochs_runs_every_batch_of_every_epoch(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=3, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(24, 8))
    assert counter.train_batches == [(e, b) for e in range(3) for b in range(3)]
    # reaching a limit ends fit without touching should_stop (only callbacks and users set it)
    assert (trainer.global_step, trainer.current_epoch, trainer.should_stop) == (9, 3, False)


def test_max_epochs_none_and_no_other_limit_means_1000_epochs(make_trainer):
    assert make_trainer().config.epochs_limit == 1000
    assert make_trainer(max_steps=5).config.epochs_limit == math.inf


class Clocked(BoringModel):
    """Each training step takes 10 seconds of a fake monotonic clock."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def training_step(self, batch, batch_idx):
        self.clock[0] += 10.0
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("max_time", [35, 35.0, datetime.timedelta(seconds=35), {"seconds": 35}, "00:00:00:35"])
def test_max_time_stops_after_the_step_that_crosses_it(monkeypatch, max_time, make_trainer):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    counter = Counter()
    trainer = make_trainer(max_time=max_time, callbacks=[counter])
    assert trainer.config.max_time == 35.0
    trainer.fit(Clocked(clock), regression_loader(24, 8))
    # steps end at 10, 20, 30 s (epoch 0), 40 s (epoch 1, first batch) >= 35 s: stop.
    assert trainer.global_step == 4
    assert counter.train_batches == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert trainer.current_epoch == 1  # epoch 1 was cut short: not completed
    assert trainer.state.batch_idx == 1  # a checkpoint taken now resumes at its second batch


def test_max_time_in_days_hours_minutes_seconds(make_trainer):
    trainer = make_trainer(max_time="01:02:03:04")
    assert trainer.config.max_time == ((1 * 24 + 2) * 60 + 3) * 60 + 4
    assert make_trainer(max_time={"minutes": 2, "seconds": 1}).config.max_time == 121.0


def test_max_steps_beats_max_time_and_max_epochs(monkeypatch, make_trainer):
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    trainer = make_trainer(max_time=1000, max_epochs=5, max_steps=2)
    trainer.fit(Clocked(clock), regression_loader(24, 8))
    assert (trainer.global_step, trainer.current_epoch) == (2, 0)  # stopped inside epoch 0


# -- limits ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit, expected", [(None, 5), (2, 2), (10, 5), (0.5, 2), (0.4, 2), (0.6, 3), (1.0, 5)])
def test_limit_train_batches(limit, expected, make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, limit_train_batches=limit, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(40, 8))
    assert counter.train_batches == [(e, b) for e in range(2) for b in range(expected)]
    assert trainer.num_training_batches == expected


@pytest.mark.parametrize("limit, expected", [(None, 5), (2, 2), (10, 5), (0.5, 2), (0.6, 3), (1.0, 5)])
def test_limit_val_batches_in_fit_and_validate(limit, expected, make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=1, limit_val_batches=limit, num_sanity_val_steps=0, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(40, 8))
    assert counter.val_batches == [[(0, b) for b in range(expected)]]
    trainer.validate(BoringModel(), regression_loader(40, 8))
    assert counter.val_batches[-1] == [(0, b) for b in range(expected)]


def test_limit_val_batches_zero_turns_validation_off(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, limit_val_batches=0, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(16, 8))
    assert (counter.val_runs, counter.sanity_batches) == ([], [])
    assert "val/loss" not in trainer.callback_metrics


@pytest.mark.parametrize("stage, setting", [("test", "limit_test_batches"), ("predict", "limit_predict_batches")])
def test_limit_test_and_predict_batches(stage, setting, make_trainer):
    trainer = make_trainer(**{setting: 2})
    out = getattr(trainer, stage)(BoringModel(), regression_loader(40, 8))
    if stage == "predict":
        assert [tuple(o.shape) for o in out] == [(8, 1), (8, 1)]
    else:
        data = RandomRegression(40)  # its first 2 batches of 8
        with torch.no_grad():
            expected = torch.nn.functional.mse_loss(BoringModel()(data.x[:16]), data.y[:16]).item()
        assert out == [{"test/loss": pytest.approx(expected, rel=1e-6)}]


class Stream(IterableDataset):
    """An iterable dataset (no length) of ``n`` regression samples."""

    def __init__(self, n: int) -> None:
        self.data = RandomRegression(n)

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


def test_int_limit_on_an_iterable_dataloader(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=2, limit_train_batches=3, callbacks=[counter])
    trainer.fit(BoringModel(), DataLoader(Stream(20), batch_size=2))
    assert counter.train_batches == [(e, b) for e in range(2) for b in range(3)]


def test_fraction_limit_on_an_iterable_dataloader_is_refused(make_trainer):
    with pytest.raises(ValueError, match=r"Trainer\(limit_train_batches=0\.5\): a fraction needs a dataloader with "
                                         r"a length; this one has none \(an IterableDataset\?\)\. Pass an int\."):
        make_trainer(max_epochs=1, limit_train_batches=0.5).fit(BoringModel(), DataLoader(Stream(20), batch_size=2))


def test_fractional_val_check_interval_on_an_iterable_dataloader_is_refused(make_trainer):
    with pytest.raises(ValueError, match=r"Trainer\(val_check_interval=0\.5\) is a fraction of an epoch, but the "
                                         r"training dataloader has no length\. Pass an int"):
        make_trainer(max_epochs=1, val_check_interval=0.5, num_sanity_val_steps=0).fit(
            BoringModel(), DataLoader(Stream(20), batch_size=2), regression_loader(16, 8))


# -- when validation runs ----------------------------------------------------------------------------

def _expected_val_runs(n: int, epochs: int, interval, every_n: int | None) -> list[tuple[int, int]]:
    """(epoch, training batches done) at each validation, written from the documented rules."""
    if every_n is None:  # an int interval counted over all epochs
        return [((b - 1) // n, b) for b in range(1, n * epochs + 1) if b % interval == 0]
    if isinstance(interval, float) and interval == 1.0:
        every = n
    else:
        every = interval if isinstance(interval, int) else max(1, int(n * interval))
    return [(e, e * n + j) for e in range(epochs) if (e + 1) % every_n == 0
            for j in range(1, n + 1) if j % every == 0]


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_validation_runs_where_val_check_interval_and_check_val_every_n_epoch_say(data, make_trainer):
    n_data = data.draw(st.integers(1, 6), label="batches in the loader")
    limit = data.draw(st.one_of(st.none(), st.integers(1, 7), st.sampled_from([0.5, 0.75, 1.0])), label="limit")
    n = n_data if limit is None else (min(n_data, limit) if isinstance(limit, int) else int(n_data * limit))
    assume(n >= 1)
    epochs = data.draw(st.integers(1, 3), label="epochs")
    every_n = data.draw(st.sampled_from([None, 1, 2]), label="check_val_every_n_epoch")
    if every_n is None:
        interval = data.draw(st.integers(1, n * epochs), label="val_check_interval")
    else:
        interval = data.draw(st.one_of(st.integers(1, n), st.sampled_from([0.25, 0.34, 0.5, 1.0])),
                             label="val_check_interval")
    counter = Counter()
    trainer = make_trainer(max_epochs=epochs, limit_train_batches=limit, val_check_interval=interval,
                       check_val_every_n_epoch=every_n, num_sanity_val_steps=0, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(n_data * 2, 2), regression_loader(4, 2))
    assert counter.val_runs == _expected_val_runs(n, epochs, interval, every_n)
    assert all(run == [(0, 0), (0, 1)] for run in counter.val_batches)
    assert len(counter.train_batches) == n * epochs


def test_validation_mid_epoch_sees_the_weights_of_that_moment(make_trainer):
    """val/loss of a mid-epoch validation is computed with the weights after the batches so far."""

    class Watch(Callback):
        def __init__(self):
            self.steps_at_val = []

        def on_validation_end(self, trainer, module):
            self.steps_at_val.append((trainer.global_step, trainer.callback_metrics["val/loss"]))

    watch = Watch()
    trainer = make_trainer(max_epochs=1, val_check_interval=0.5, num_sanity_val_steps=0, callbacks=[watch])
    model = BoringModel()
    trainer.fit(model, regression_loader(32, 8), regression_loader(16, 8))
    assert [step for step, _ in watch.steps_at_val] == [2, 4]
    data = RandomRegression(16)
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(data.x), data.y).item()
    assert watch.steps_at_val[1][1] == pytest.approx(final, rel=1e-6)
    assert watch.steps_at_val[0][1] != pytest.approx(final, rel=1e-3)


# -- sanity check --------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, expected", [(2, 2), (0, 0), (-1, 5), (1, 1), (9, 5)])
def test_num_sanity_val_steps(steps, expected, make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=steps, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(40, 8))
    assert counter.sanity_batches == [(0, b) for b in range(expected)]
    assert len(counter.val_runs) == 1


@pytest.mark.parametrize("steps, limit, expected", [(2, None, 2), (2, 1, 1), (-1, None, 10), (-1, 3, 3)])
def test_sanity_check_on_an_iterable_val_dataloader(steps, limit, expected, make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=steps, limit_val_batches=limit, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(16, 8), DataLoader(Stream(20), batch_size=2))
    assert counter.sanity_batches == [(0, b) for b in range(expected)]
    assert counter.val_batches == [[(0, b) for b in range(expected if limit else 10)]]


def test_sanity_check_runs_on_every_val_dataloader(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=2, callbacks=[counter])
    trainer.fit(MultiVal(), regression_loader(16, 8), [regression_loader(40, 8), regression_loader(8, 8)])
    assert counter.sanity_batches == [(0, 0), (0, 1), (1, 0)]


def test_sanity_check_respects_limit_val_batches(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=3, limit_val_batches=1, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(40, 8))
    assert counter.sanity_batches == [(0, 0)]
    counter = Counter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=-1, limit_val_batches=0.5, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(16, 8), regression_loader(40, 8))
    assert counter.sanity_batches == [(0, 0), (0, 1)]


def test_sanity_check_metrics_are_not_published(make_trainer):
    seen = []

    class AfterSanity(Callback):
        def on_sanity_check_end(self, trainer, module):
            seen.append((dict(trainer.callback_metrics), dict(trainer.logged_metrics),
                         dict(trainer.progress_bar_metrics)))

    class BarVal(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("val/loss", 1.0, prog_bar=True)

    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=1, callbacks=[AfterSanity()], logger=logger, log_every_n_steps=100)
    trainer.fit(BarVal(), regression_loader(16, 8), regression_loader(16, 8))
    assert seen == [({}, {}, {})]
    assert trainer.callback_metrics["val/loss"] == 1.0  # from the real validation at the epoch's end
    with open(logger.metrics_file) as f:
        # the validation after 2 stepped batches writes its row at step 1, as Lightning's (c1f6089)
        assert f.read().splitlines() == ["step,val/loss,epoch", "1,1.0,0"]


def test_no_sanity_check_without_val_dataloaders(make_trainer):
    counter = Counter()
    make_trainer(max_epochs=1, callbacks=[counter]).fit(BoringModel(), regression_loader(16, 8))
    assert (counter.sanity_batches, counter.val_runs) == ([], [])


# -- fast_dev_run ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, n", [(True, 1), (3, 3)])
def test_fast_dev_run_runs_n_batches_of_everything_without_a_logger(tmp_path, value, n):
    counter = Counter()
    trainer = Trainer(fast_dev_run=value, max_epochs=5, enable_progress_bar=False, callbacks=[counter])
    trainer.fit(BoringModel(), regression_loader(80, 8), regression_loader(80, 8))
    assert counter.train_batches == [(0, b) for b in range(n)]
    assert counter.sanity_batches == []
    assert counter.val_batches == [[(0, b) for b in range(n)]]
    assert (trainer.global_step, trainer.current_epoch) == (n, 1)
    assert trainer.loggers == [] and os.listdir(tmp_path) == []
    assert len(trainer.predict(BoringModel(), regression_loader(80, 8))) == n
    assert trainer.config.log_every_n_steps == 1


def test_fast_dev_run_false_or_zero_changes_nothing(make_trainer):
    for value in (False, 0):
        trainer = make_trainer(fast_dev_run=value, max_epochs=4, num_sanity_val_steps=5)
        assert (trainer.config.max_epochs, trainer.config.num_sanity_val_steps) == (4, 5)


# -- what validate, test and predict return --------------------------------------------------------------

def _mse(model: torch.nn.Module, data: RandomRegression) -> float:
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(data.x).double(), data.y.double()).item()


def test_validate_and_test_return_the_batch_size_weighted_epoch_mean(make_trainer):
    model = BoringModel()
    loader = regression_loader(10, 4)  # batches of 4, 4, 2
    trainer = make_trainer()
    expected = _mse(model, loader.dataset)
    val = trainer.validate(model, loader)
    test = trainer.test(model, loader)
    assert val == [{"val/loss": pytest.approx(expected, rel=1e-6)}]
    assert test == [{"test/loss": pytest.approx(expected, rel=1e-6)}]
    assert all(type(v) is float for v in (*val[0].values(), *test[0].values()))
    assert trainer.callback_metrics == test[0]  # each entry point starts with no metrics (as Lightning)


def test_validate_does_not_change_the_weights_nor_the_mode(make_trainer):
    model = BoringModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    make_trainer().validate(model, regression_loader(16, 8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_predict_returns_the_outputs_in_order(make_trainer):
    model = BoringModel()
    loader = regression_loader(10, 4)
    out = make_trainer().predict(model, loader)
    assert [tuple(o.shape) for o in out] == [(4, 1), (4, 1), (2, 1)]
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(out), model(loader.dataset.x), rtol=0, atol=0)


def test_predict_with_several_dataloaders_returns_a_list_per_dataloader(make_trainer):
    model = MultiVal()
    out = make_trainer().predict(model, [regression_loader(8, 4), regression_loader(4, 4, seed=1)])
    assert [[tuple(o.shape) for o in per] for per in out] == [[(4, 1), (4, 1)], [(4, 1)]]
    with torch.no_grad():
        torch.testing.assert_close(out[1][0], model(RandomRegression(4, seed=1).x) + 1)


def test_several_val_dataloaders_name_their_metrics_with_the_dataloader_idx(make_trainer):
    model = MultiVal()
    loaders = [regression_loader(10, 4), regression_loader(6, 4, seed=1)]
    expected = [_mse(model, RandomRegression(10)), _mse(model, RandomRegression(6, seed=1))]
    result = make_trainer().validate(model, loaders)
    assert result == [
        {"val/loss/dataloader_idx_0": pytest.approx(expected[0], rel=1e-6), "val/extra": 7.0},
        {"val/loss/dataloader_idx_1": pytest.approx(expected[1], rel=1e-6), "val/extra": 7.0},
    ]


def test_several_val_dataloaders_during_fit(make_trainer):
    counter = Counter()
    trainer = make_trainer(max_epochs=1, num_sanity_val_steps=0, callbacks=[counter])
    model = MultiVal()
    trainer.fit(model, regression_loader(16, 8), [regression_loader(10, 4), regression_loader(6, 4, seed=1)])
    assert counter.val_batches == [[(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]]
    metrics = trainer.callback_metrics
    assert {k for k in metrics if k.startswith("val/")} == {
        "val/loss/dataloader_idx_0", "val/loss/dataloader_idx_1", "val/extra"}
    assert metrics["val/loss/dataloader_idx_1"] == pytest.approx(_mse(model, RandomRegression(6, seed=1)), rel=1e-6)


class _LossWatcher(BoringModel):
    """Notes, at the start of each training_step, whether the previous step's loss is still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.previous: Any = None
        self.alive: list[bool] = []

    def training_step(self, batch, batch_idx):
        if self.previous is not None:
            self.alive.append(self.previous() is not None)
        loss = super().training_step(batch, batch_idx)
        self.previous = weakref.ref(loss)
        return loss


@pytest.mark.parametrize("k, with_batch_end_hook", [(1, False), (2, True)])
def test_the_loop_lets_go_of_a_steps_loss_before_the_next_forward(make_trainer, k, with_batch_end_hook):
    """As in a plain loop, nothing in the loop keeps a step's loss (and with it its autograd graph)
    once the step is over: held until the next training_step returned, the graph's nodes outlived
    the next forward and raised peak RSS on the demo workload (benchmarks/realistic.py)."""

    class BatchEnd(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            assert outputs["loss"].grad_fn is None  # what the hook gets is detached

    model = _LossWatcher()
    make_trainer(max_epochs=1, accumulate_grad_batches=k, logger=False, enable_checkpointing=False,
                 callbacks=[BatchEnd()] if with_batch_end_hook else []).fit(model, regression_loader(32, 4))
    assert model.alive == [False] * 7
