"""Bad input gets a clear error: what was received, what is expected, a fix; raised before
training starts wherever the information is available then."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from trainer.callbacks import Callback, CSVLogger, EarlyStopping, LearningRateMonitor
from trainer.strategies import STRATEGIES
from trainer import Trainer
from tests.helpers import BoringModel, regression_loader

PRECISION_CHOICES = "Expected one of '32-true', 'bf16-mixed', '16-mixed', 'bf16-true'."


class Recorder(Callback):
    """Which stages of a run were reached."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, trainer, module):
        self.events.append("fit_start")

    def on_train_start(self, trainer, module):
        self.events.append("train_start")

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.events.append("train_batch")


# -- strings that become objects ------------------------------------------------------------------

@pytest.mark.parametrize("value, suggestion", [
    ("fp61", "fp16"), ("bf16-mix", "bf16-mixed"), ("32-tru", "32-true"), ("bf16_true", "bf16-true"),
])
def test_unknown_precision_lists_choices_and_suggests_closest(value, suggestion, make_trainer):
    with pytest.raises(ValueError, match=re.escape(f"Trainer(precision={value!r}): unknown precision.")) as info:
        make_trainer(precision=value)
    message = str(info.value)
    assert PRECISION_CHOICES in message
    assert message.endswith(f"Did you mean {suggestion!r}?")


def test_unknown_precision_without_a_close_match_makes_no_suggestion(make_trainer):
    with pytest.raises(ValueError, match=re.escape("Trainer(precision='xyz'): unknown precision.")) as info:
        make_trainer(precision="xyz")
    assert str(info.value).endswith(PRECISION_CHOICES)


@pytest.mark.parametrize("value, suggestion", [("single-device", "single_device"), ("autoo", "auto")])
def test_unknown_strategy_lists_registry_and_suggests(value, suggestion, make_trainer):
    choices = ", ".join(repr(name) for name in STRATEGIES)
    with pytest.raises(ValueError, match=re.escape(f"Trainer(strategy={value!r}): unknown strategy. "
                                                   f"Expected a Strategy object or one of {choices}.")) as info:
        make_trainer(strategy=value)
    assert str(info.value).endswith(f"Did you mean {suggestion!r}?")


def test_strategy_of_wrong_type_is_refused(make_trainer):
    with pytest.raises(ValueError, match=r"Trainer\(strategy=3\): unknown strategy"):
        make_trainer(strategy=3)


@pytest.mark.parametrize("value, suggestion", [("cpuu", "cpu"), ("cdua", "cuda"), ("gpx", "gpu")])
def test_unknown_accelerator_lists_choices_and_suggests(value, suggestion, make_trainer):
    expected = (f"Trainer(accelerator={value!r}): unknown accelerator. Expected one of "
                f"'auto', 'cpu', 'cuda', 'gpu', 'mps'. Did you mean {suggestion!r}?")
    with pytest.raises(ValueError, match=re.escape(expected)):
        make_trainer(accelerator=value)


# -- loop settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"max_steps": 0, "max_epochs": None}, ValueError,
     r"Trainer\(max_steps=0\): expected a positive number of optimizer steps, or -1 for no limit"),
    ({"max_epochs": -1, "max_steps": -1}, ValueError,
     r"Trainer\(max_epochs=-1, max_steps=-1\): no limit at all would train forever\. Set max_epochs"),
    ({"max_epochs": 0}, ValueError, r"Trainer\(max_epochs=0\): expected a positive int, -1 for no limit"),
    ({"max_epochs": 2.5}, ValueError, r"Trainer\(max_epochs=2\.5\): expected a positive int"),
    ({"max_steps": -2}, ValueError, r"Trainer\(max_steps=-2\): expected a positive number"),
    ({"limit_train_batches": -1}, ValueError,
     r"Trainer\(limit_train_batches=-1\): expected a number of batches >= 0, or a fraction"),
    ({"limit_train_batches": 1.5}, ValueError,
     r"Trainer\(limit_train_batches=1\.5\): a float is a fraction of the epoch and must lie in \[0\.0, 1\.0\]\. "
     r"For a number of batches pass an int, e\.g\. limit_train_batches=1\.$"),
    ({"limit_val_batches": -0.5}, ValueError,  # no "pass an int, e.g. 0" advice: that would turn validation off
     r"Trainer\(limit_val_batches=-0\.5\): a float is a fraction of the epoch and must lie in \[0\.0, 1\.0\]\.$"),
    ({"limit_train_batches": 0}, ValueError, r"Trainer\(limit_train_batches=0\): fit would train on no batch"),
    ({"limit_val_batches": "all"}, TypeError,
     r"Trainer\(limit_val_batches='all'\): expected an int \(batches\) or a float"),
    ({"val_check_interval": 0}, ValueError,
     r"Trainer\(val_check_interval=0\): an int counts training batches and must be >= 1"),
    ({"val_check_interval": 2.0}, ValueError,
     r"Trainer\(val_check_interval=2\.0\): a float is a fraction of the epoch in \(0\.0, 1\.0\]"),
    ({"val_check_interval": 0.0}, ValueError, r"Trainer\(val_check_interval=0\.0\): a float is a fraction"),
    ({"val_check_interval": "half"}, TypeError, r"Trainer\(val_check_interval='half'\): expected a float"),
    ({"val_check_interval": 0.5, "check_val_every_n_epoch": None}, ValueError,
     r"check_val_every_n_epoch=None\) counts val_check_interval over all epochs, so val_check_interval must "
     r"be an int number of batches, got 0\.5"),
    ({"check_val_every_n_epoch": 0}, ValueError, r"Trainer\(check_val_every_n_epoch=0\): expected a positive int"),
    ({"accumulate_grad_batches": 0}, ValueError, r"Trainer\(accumulate_grad_batches=0\): expected a positive int"),
    ({"accumulate_grad_batches": 2.0}, ValueError, r"Trainer\(accumulate_grad_batches=2\.0\): expected a positive"),
    ({"gradient_clip_val": -1}, ValueError, r"Trainer\(gradient_clip_val=-1\): expected a finite number >= 0, or None"),
    ({"gradient_clip_algorithm": "l2"}, ValueError,
     r"Trainer\(gradient_clip_algorithm='l2'\): expected 'norm', 'value'"),
    ({"log_every_n_steps": 0}, ValueError, r"Trainer\(log_every_n_steps=0\): expected a positive int"),
    ({"num_sanity_val_steps": -2}, ValueError, r"Trainer\(num_sanity_val_steps=-2\): expected an int >= 0, or -1"),
    ({"fast_dev_run": -1}, ValueError, r"Trainer\(fast_dev_run=-1\): expected True/False or a number of batches"),
    ({"deterministic": "yes"}, ValueError, r"Trainer\(deterministic='yes'\): expected True, False or 'warn'"),
])
def test_bad_loop_setting_is_refused_at_construction(kwargs, error, pattern, make_trainer):
    with pytest.raises(error, match=pattern):
        make_trainer(**kwargs)


@pytest.mark.parametrize("value", ["abc", "1:2", "00:01:xx:00", [1], {"hourz": 1}, True])
def test_unreadable_max_time_is_refused(value, make_trainer):
    with pytest.raises(ValueError, match=re.escape(f"Trainer(max_time={value!r}): cannot read this as a duration. "
                                                   "Pass seconds (e.g. 3600), a datetime.timedelta")):
        make_trainer(max_time=value)


@pytest.mark.parametrize("value", [0, -5, "00:00:00:00", {"seconds": -1}])
def test_non_positive_max_time_is_refused(value, make_trainer):
    with pytest.raises(ValueError, match=re.escape(f"Trainer(max_time={value!r}): the duration must be positive.")):
        make_trainer(max_time=value)


@pytest.mark.parametrize("name, suggestion", [
    ("max_epoch", "max_epochs"), ("val_check_intervall", "val_check_interval"),
    ("preciison", "precision"), ("callback", "callbacks"), ("devics", "devices"),
])
def test_unknown_trainer_argument_suggests_closest(name, suggestion, make_trainer):
    with pytest.raises(TypeError, match=re.escape(f"Trainer({name}=...): unknown argument. "
                                                  f"Did you mean {suggestion!r}?")):
        make_trainer(**{name: 1})


def test_val_check_interval_longer_than_the_epoch_fails_before_training(make_trainer):
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, val_check_interval=5, callbacks=[rec], num_sanity_val_steps=0)
    with pytest.raises(ValueError, match=r"Trainer\(val_check_interval=5\) is more than the 4 training batches of "
                                         r"an epoch, so validation would never run"):
        trainer.fit(BoringModel(), regression_loader(32, 8), regression_loader(16, 8))
    assert "train_batch" not in rec.events
    assert trainer.global_step == 0


def test_val_check_interval_longer_than_the_epoch_fails_before_the_sanity_check(make_trainer):
    events = []

    class Sanity(Callback):
        def on_sanity_check_start(self, trainer, module):
            events.append("sanity")

    with pytest.raises(ValueError, match=r"Trainer\(val_check_interval=5\) is more than the 4 training batches"):
        make_trainer(max_epochs=1, val_check_interval=5, callbacks=[Sanity()]).fit(
            BoringModel(), regression_loader(32, 8), regression_loader(16, 8))
    assert events == []


@pytest.mark.parametrize("limit, what", [("limit_train_batches", "train"), ("limit_val_batches", "val")])
def test_fraction_that_rounds_to_no_batch_fails_before_training(limit, what, make_trainer):
    rec = Recorder()
    trainer = make_trainer(max_epochs=3, callbacks=[rec], **{limit: 0.1})
    with pytest.raises(ValueError, match=re.escape(f"Trainer({limit}=0.1): 0.1 of the 4 batches of the {what} "
                                                   "dataloader is less than one batch")):
        trainer.fit(BoringModel(), regression_loader(32, 8), regression_loader(32, 8))
    assert rec.events == []


# -- devices and nodes -------------------------------------------------------------------------------

def test_two_devices_with_the_single_device_strategy_is_refused(make_trainer):
    with pytest.raises(ValueError, match=r"single_device' trains on one device, but 2 devices were asked for\. "
                                         r"Pass devices=1, or strategy='ddp'"):
        make_trainer(devices=2, strategy="single_device")


def test_two_devices_picks_ddp_which_launches_at_fit(make_trainer):
    from trainer.strategies import DDPStrategy

    strategy = make_trainer(devices=2).strategy
    assert isinstance(strategy, DDPStrategy) and strategy.needs_launch and strategy.requested_processes == 2


@pytest.mark.parametrize("devices, pattern", [
    (0, r"Trainer\(devices=0\): expected at least 1 device"),
    ("two", r"Trainer\(devices='two'\): expected 'auto', a positive int"),
    ([], r"Trainer\(devices=\[\]\): the list of device indices is empty"),
])
def test_bad_devices_value_is_refused(devices, pattern, make_trainer):
    with pytest.raises(ValueError, match=pattern):
        make_trainer(devices=devices)


def test_several_nodes_without_a_launcher_say_how_to_launch(monkeypatch, make_trainer):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"Trainer\(num_nodes=2\): this process was not started by a launcher.*"
                                         r"trainer launch --num-machines 2"):
        make_trainer(num_nodes=2)
    with pytest.raises(ValueError, match=r"num_nodes=0.*positive int"):
        make_trainer(num_nodes=0)


def test_num_nodes_must_agree_with_the_launcher(monkeypatch, make_trainer):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"num_nodes=3.*4 processes, 2 per machine, i.e. 2 machine"):
        make_trainer(num_nodes=3)


# -- callbacks and loggers ---------------------------------------------------------------------------

def test_callback_that_is_not_a_callback_is_refused(make_trainer):
    with pytest.raises(TypeError, match=r"Trainer\(callbacks=\[\.\.\., 'early'\]\): every callback must subclass "
                                        r"callbacks\.Callback; got str\."):
        make_trainer(callbacks=[EarlyStopping("val/loss"), "early"])


def test_callback_class_instead_of_instance_is_refused_with_a_fix(make_trainer):
    with pytest.raises(TypeError, match=r"got the class EarlyStopping itself; pass an instance, "
                                        r"e\.g\. EarlyStopping\(\.\.\.\)"):
        make_trainer(callbacks=[EarlyStopping])


def test_callbacks_value_that_is_not_a_list_is_refused(make_trainer):
    with pytest.raises(TypeError, match=r"Trainer\(callbacks=3\): expected a Callback or a list of them"):
        make_trainer(callbacks=3)


@pytest.mark.parametrize("logger", ["csv", ["csv"], [CSVLogger("runs"), 1]])
def test_logger_of_wrong_type_is_refused(logger, make_trainer):
    bad = logger if isinstance(logger, str) else logger[-1]
    with pytest.raises(TypeError, match=re.escape(f"Trainer(logger={bad!r}): expected a Logger (e.g. "
                                                  "CSVLogger('runs')), a list of them, None for the default, "
                                                  "or False for none.")):
        make_trainer(logger=logger)


def test_lr_monitor_without_logger_fails_before_training(make_trainer):
    rec = Recorder()
    trainer = make_trainer(max_epochs=1, callbacks=[LearningRateMonitor(), rec])
    with pytest.raises(ValueError, match=r"LearningRateMonitor needs a logger to write to, but the Trainer has "
                                         r"logger=False"):
        trainer.fit(BoringModel(), regression_loader(16, 8))
    assert rec.events == []


@pytest.mark.parametrize("kwargs, pattern", [
    ({"mode": "maximum"}, r"EarlyStopping\(mode='maximum'\): expected 'min' or 'max'"),
    ({"patience": -1}, r"EarlyStopping\(patience=-1\): expected an int >= 0"),
    ({"patience": 1.5}, r"EarlyStopping\(patience=1\.5\): expected an int >= 0"),
])
def test_bad_early_stopping_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        EarlyStopping("val/loss", **kwargs)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"logging_interval": "batch"}, r"LearningRateMonitor\(logging_interval='batch'\): expected 'step', 'epoch'"),
])
def test_bad_lr_monitor_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        LearningRateMonitor(**kwargs)


# -- what fit is given -------------------------------------------------------------------------------

def test_a_module_that_is_not_a_train_module_is_refused(make_trainer):
    with pytest.raises(TypeError, match=r"trainer\.fit\(model=\.\.\.\): expected a TrainModule, got Linear\. "
                                        r"Subclass trainer\.TrainModule"):
        make_trainer(max_epochs=1).fit(torch.nn.Linear(4, 1), regression_loader(16, 8))
    with pytest.raises(TypeError, match=r"trainer\.validate\(model=\.\.\.\): expected a TrainModule, got str"):
        make_trainer().validate("model", regression_loader(16, 8))


@pytest.mark.parametrize("loader, error, pattern", [
    (None, TypeError, r"trainer\.fit\(BoringModel\(\.\.\.\)\): no training data\. Pass train_dataloaders=\.\.\., or datamodule"),
    (torch.zeros(3), TypeError, r"trainer\.fit\(train_dataloaders=tensor\(\[0\., 0\., 0\.\]\)\): expected a torch "),
    ([regression_loader(16, 8), regression_loader(16, 8)], TypeError,
     r"trainer\.fit\(train_dataloaders=\[2 dataloaders\]\): training takes one dataloader\. Combine the datasets"),
])
def test_train_dataloaders_of_wrong_kind_are_refused(loader, error, pattern, make_trainer):
    with pytest.raises(error, match=pattern):
        make_trainer(max_epochs=1).fit(BoringModel(), loader)


def test_empty_eval_dataloader_list_is_refused(make_trainer):
    with pytest.raises(ValueError, match=r"trainer\.validate\(dataloaders=\[\]\): the list of dataloaders is empty"):
        make_trainer().validate(BoringModel(), [])


class Frozen(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.requires_grad_(False)


def test_module_without_trainable_parameters_fails_before_training(make_trainer):
    rec = Recorder()
    with pytest.raises(ValueError, match=r"Frozen has no trainable parameters \(none with requires_grad=True\), "
                                         r"so fit has nothing to optimize"):
        make_trainer(max_epochs=1, callbacks=[rec]).fit(Frozen(), regression_loader(16, 8))
    assert rec.events == []


def test_frozen_module_can_still_be_evaluated(make_trainer):
    result = make_trainer().validate(Frozen(), regression_loader(16, 8))
    assert list(result[0]) == ["val/loss"]


def _empty_loader(**kw) -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1)), batch_size=4, **kw)


def test_empty_train_dataloader_fails_before_training(make_trainer):
    rec = Recorder()
    with pytest.raises(ValueError, match=r"The train dataloader is empty \(len 0\)\. Check that its dataset is not "
                                         r"empty and that batch_size is not larger than the dataset with "
                                         r"drop_last=True"):
        make_trainer(max_epochs=1, callbacks=[rec]).fit(BoringModel(), _empty_loader())
    assert rec.events == []


def test_batch_size_larger_than_dataset_with_drop_last_counts_as_empty(make_trainer):
    loader = DataLoader(TensorDataset(torch.zeros(3, 4), torch.zeros(3, 1)), batch_size=4, drop_last=True)
    with pytest.raises(ValueError, match=r"The train dataloader is empty \(len 0\)"):
        make_trainer(max_epochs=1).fit(BoringModel(), loader)


def test_empty_val_dataloader_fails_before_training(make_trainer):
    rec = Recorder()
    with pytest.raises(ValueError, match=r"The val dataloader is empty \(len 0\)"):
        make_trainer(max_epochs=1, callbacks=[rec]).fit(BoringModel(), regression_loader(16, 8), _empty_loader())
    assert "train_batch" not in rec.events


@pytest.mark.parametrize("stage", ["test", "predict"])
def test_empty_eval_dataloader_is_refused(stage, make_trainer):
    with pytest.raises(ValueError, match=rf"The {stage} dataloader is empty \(len 0\)"):
        getattr(make_trainer(), stage)(BoringModel(), _empty_loader())


class _NothingIterable(IterableDataset):
    def __iter__(self):
        return iter(())


@pytest.mark.timeout(20)
@pytest.mark.parametrize("limits", [{"max_steps": 5}, {"max_epochs": 3}])
def test_iterable_train_dataloader_that_yields_nothing_fails_instead_of_spinning(limits, make_trainer):
    """No length to check up front; an epoch without a batch must end fit (it used to loop forever
    with max_steps and no max_epochs)."""
    rec = Recorder()
    trainer = make_trainer(callbacks=[rec], **limits)
    with pytest.raises(ValueError, match=r"fit\(train_dataloaders=\.\.\.\): epoch 0 yielded no batch"):
        trainer.fit(BoringModel(), DataLoader(_NothingIterable(), batch_size=2))
    assert trainer.current_epoch == 0  # raised as soon as the first epoch came back empty
    assert "train_batch" not in rec.events


# -- what configure_optimizers returns --------------------------------------------------------------

SHAPES = (r"Expected an optimizer; a list of optimizers; \(optimizer, scheduler\); \(\[optimizers\], \[schedulers\]\); "
          r"\{'optimizer': opt, 'lr_scheduler': scheduler or")


class Configured(BoringModel):
    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def configure_optimizers(self):
        return self.make(self)


def _sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1)


def _plateau(m):
    opt = _sgd(m)
    return opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt)


def _with_scheduler_dict(**entry):
    def make(m):
        opt = _sgd(m)
        return {"optimizer": opt, "lr_scheduler": {k: (v(opt) if callable(v) else v) for k, v in entry.items()}}
    return make


@pytest.mark.parametrize("make, pattern", [
    (lambda m: None, r"returned None: nothing was returned \(did you forget `return`\?\)\. "),
    (lambda m: "adam", r"returned 'adam': a str is not one of the accepted shapes\. "),
    (lambda m: [_sgd(m), _sgd(m), "sgd"], r"returned \[SGD, SGD, 'sgd'\]: a list is not one of the accepted shapes"),
    (lambda m: [], r"returned \[\]: a list is not one of the accepted shapes"),
    (lambda m: {"optimizer": _sgd(m), "lr_sched": None}, r"the dict accepts only optimizer/lr_scheduler/monitor keys"),
    (lambda m: {"optimizer": _sgd(m), "lr_scheduler": _sgd(m)},
     r"returned \{'optimizer': SGD, 'lr_scheduler': SGD\}: SGD is not a learning-rate scheduler\. "),
    (lambda m: {"lr_scheduler": None}, r"returned \{'lr_scheduler': None\}: the dict has no 'optimizer' key\. "),
    (lambda m: {"optimizer": "sgd"}, r"returned \{'optimizer': 'sgd'\}: str is not a torch\.optim\.Optimizer\. "),
    (lambda m: {"optimizer": _plateau(m)[0], "lr_scheduler": _plateau(m)[1]},
     r"returned \{'optimizer': SGD, 'lr_scheduler': ReduceLROnPlateau\}: ReduceLROnPlateau needs a metric: return "
     r"\{'optimizer': opt, 'lr_scheduler': \{'scheduler': plateau, 'monitor': 'val/loss'\}\}\. "),
    (_plateau, r"returned \(SGD, ReduceLROnPlateau\): ReduceLROnPlateau needs a metric"),
    (_with_scheduler_dict(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1), interval="batch"),
     r"lr_scheduler interval='batch' must be 'step' or 'epoch'\. "),
    (_with_scheduler_dict(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1), frequency=0),
     r"lr_scheduler frequency=0 must be a positive int\. "),
    (_with_scheduler_dict(sched=lambda o: torch.optim.lr_scheduler.StepLR(o, 1)),
     r"the lr_scheduler dict needs a 'scheduler' key and accepts only "
     r"scheduler/interval/frequency/monitor/strict/name \(got \['sched'\]\)\. "),
    (lambda m: (_sgd(m), "cosine"), r"returned \(SGD, 'cosine'\): str is not a learning-rate scheduler\. "),
], ids=["none", "string", "optimizer-and-string", "empty-list", "dict-unknown-key",
        "optimizer-as-scheduler", "dict-without-optimizer", "dict-with-string-optimizer", "plateau-dict-no-monitor",
        "plateau-tuple-no-monitor", "bad-interval", "bad-frequency", "scheduler-dict-without-scheduler",
        "string-scheduler"])
def test_unusable_configure_optimizers_fails_before_training(make, pattern, make_trainer):
    rec = Recorder()
    with pytest.raises(TypeError, match=r"^configure_optimizers\(\) returned ") as info:
        make_trainer(max_epochs=1, callbacks=[rec]).fit(Configured(make), regression_loader(16, 8))
    message = str(info.value)
    assert re.search(pattern, message), message
    assert re.search(SHAPES, message), message
    assert "\n" not in message
    assert rec.events == []


@pytest.mark.parametrize("make", [
    _sgd, lambda m: [_sgd(m)], lambda m: ([_sgd(m)], []),
    lambda m: (lambda o: (o, torch.optim.lr_scheduler.StepLR(o, 1)))(_sgd(m)),
    lambda m: (lambda o: ([o], [torch.optim.lr_scheduler.StepLR(o, 1)]))(_sgd(m)),
    lambda m: (lambda o: {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1)})(_sgd(m)),
])
def test_accepted_configure_optimizers_shapes_train(make, make_trainer):
    trainer = make_trainer(max_epochs=2)
    trainer.fit(Configured(make), regression_loader(16, 8))
    assert trainer.global_step == 4
    assert len(trainer.optimizers) == 1 and isinstance(trainer.optimizers[0], torch.optim.SGD)


# -- what training_step returns -----------------------------------------------------------------

class Returns(BoringModel):
    def __init__(self, bad, at: int = 0) -> None:
        super().__init__()
        self.bad, self.at = bad, at

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return self.bad(loss) if batch_idx == self.at else loss


@pytest.mark.parametrize("bad, at, error, pattern", [
    (lambda loss: 1.0, 0, TypeError, r"training_step returned float at batch_idx 0 \(global_step 0\)\. Expected a "
                                     r"loss tensor, a dict with a 'loss' key \(and optionally 'num_items'\), or None "
                                     r"to skip the batch\."),
    (lambda loss: "loss", 2, TypeError, r"training_step returned str at batch_idx 2 \(global_step 2\)\. Expected"),
    (lambda loss: {"los": loss}, 1, TypeError, r"training_step returned a dict with keys \['los'\] at batch_idx 1 "
                                               r"\(global_step 1\)\. Expected a loss tensor"),
    (lambda loss: (loss, 1), 0, TypeError, r"training_step returned tuple at batch_idx 0"),
    (lambda loss: loss.repeat(3), 1, TypeError, r"training_step's loss at batch_idx 1 must be a one-element tensor, "
                                                r"got Tensor\(3,\)\."),
    (lambda loss: {"loss": 2.0}, 0, TypeError, r"training_step's loss at batch_idx 0 must be a one-element tensor, "
                                               r"got float\."),
    (lambda loss: loss.detach(), 0, RuntimeError, r"training_step's loss at batch_idx 0 does not require grad: it is "
                                                  r"not connected to any trainable parameter"),
])
def test_unusable_training_step_output_names_the_batch(bad, at, error, pattern, make_trainer):
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(error, match=pattern):
        trainer.fit(Returns(bad, at), regression_loader(32, 8))
    assert trainer.global_step == at


class SkipSome(BoringModel):
    """Returns None (skip) for the batch indices in ``skip``; records which batches stepped."""

    def __init__(self, skip: set[int]) -> None:
        super().__init__()
        self.skip = skip
        self.stepped_after: list[int] = []
        self._steps = 0

    def training_step(self, batch, batch_idx):
        if batch_idx in self.skip:
            return None
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.trainer.global_step != self._steps:
            self._steps = self.trainer.global_step
            self.stepped_after.append(batch_idx)


def _manual_sgd(model: BoringModel, batches: list[list[int]], lr: float) -> torch.nn.Linear:
    """One SGD step per list of batch indices, on the mean loss over their samples."""
    data = regression_loader(32, 8).dataset
    layer = torch.nn.Linear(4, 1)
    layer.load_state_dict(model.layer.state_dict())
    for window in batches:
        idx = [i for b in window for i in range(8 * b, 8 * b + 8)]
        loss = torch.nn.functional.mse_loss(layer(data.x[idx]), data.y[idx])
        layer.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in layer.parameters():
                p -= lr * p.grad
    return layer


def test_training_step_returning_none_skips_the_batch(make_trainer):
    model = SkipSome({1, 2})
    start = BoringModel()  # same seed, same initial weights
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, regression_loader(32, 8))
    assert trainer.global_step == 2
    assert model.stepped_after == [0, 3]
    expected = _manual_sgd(start, [[0], [3]], lr=0.1)
    torch.testing.assert_close(model.layer.weight, expected.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.layer.bias, expected.bias, rtol=0, atol=1e-6)


def test_accumulation_window_where_every_batch_returned_none_does_not_step(make_trainer):
    model = SkipSome({0, 1})
    start = BoringModel()
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model, regression_loader(32, 8))
    assert trainer.global_step == 1          # windows [0, 1] (all skipped) and [2, 3]
    assert model.stepped_after == [3]
    expected = _manual_sgd(start, [[2, 3]], lr=0.1)
    torch.testing.assert_close(model.layer.weight, expected.weight, rtol=0, atol=1e-6)


def test_window_with_one_skipped_batch_averages_over_the_others(make_trainer):
    model = SkipSome({2})
    start = BoringModel()
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model, regression_loader(32, 8))
    assert trainer.global_step == 2
    expected = _manual_sgd(start, [[0, 1], [3]], lr=0.1)
    torch.testing.assert_close(model.layer.weight, expected.weight, rtol=0, atol=1e-6)


# -- evaluation with several dataloaders ----------------------------------------------------------

def test_several_val_dataloaders_need_a_dataloader_idx_argument(make_trainer):
    loaders = [regression_loader(16, 8), regression_loader(16, 8, seed=1)]
    with pytest.raises(TypeError, match=r"trainer\.validate got 2 dataloaders, so BoringModel\.validation_step is "
                                        r"called as validation_step\(batch, batch_idx, dataloader_idx\); add a "
                                        r"dataloader_idx argument"):
        make_trainer().validate(BoringModel(), loaders)
