"""The rest of Lightning's daily surface (issue 13, point 6): log_dict, all_gather, configure_callbacks,
on_train_batch_end outputs, validate/test/predict(ckpt_path=...), prediction writers,
estimated_stepping_batches, num_val_batches, interrupted, the module's read-only state,
load_from_checkpoint and rank_zero_only."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
from torch.utils.data import DataLoader

from trainer.callbacks import BasePredictionWriter, CSVLogger, EarlyStopping, ModelCheckpoint, ProgressBar
from trainer.utils import rank_zero_only
from tests.helpers import BoringModel, RandomRegression, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.trainers import LEAN, quiet_trainer


def test_log_dict_logs_every_item_with_the_same_options(make_trainer):
    class LogsDict(BoringModel):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            err = self(x) - y
            self.log_dict({"mae": err.abs().mean(), "mse": (err ** 2).mean()}, prog_bar=True)

    trainer = make_trainer(**LEAN)
    (result,) = trainer.validate(LogsDict(), regression_loader(16, 16))
    assert set(result) == {"mae", "mse"} and set(trainer.progress_bar_metrics) == {"mae", "mse"}


def test_module_state_mirrors_the_trainer(make_trainer):
    seen = {}

    class Looks(BoringModel):
        def on_train_epoch_end(self):
            seen[self.current_epoch] = (self.global_step, self.device, self.dtype, self.logger, self.loggers,
                                        self.global_rank, self.local_rank)

    model, logger = Looks(), CSVLogger("logs")
    assert (model.global_step, model.current_epoch, model.logger, model.loggers) == (0, 0, None, [])
    assert (model.global_rank, model.local_rank) == (0, 0)  # not attached: rank zero, as in Lightning
    make_trainer(max_epochs=2, logger=logger, **LEAN).fit(model, regression_loader(16, 8))
    assert seen == {0: (2, torch.device("cpu"), torch.float32, logger, [logger], 0, 0),
                    1: (4, torch.device("cpu"), torch.float32, logger, [logger], 0, 0)}
    assert model.to(torch.float64).dtype == torch.float64


def test_configure_callbacks_replace_trainer_callbacks_of_the_same_type_and_checkpoints_go_last(make_trainer):
    class WithCallbacks(BoringModel):
        def configure_callbacks(self):
            return [EarlyStopping(monitor="val/loss", patience=7), ModelCheckpoint(dirpath="mine")]

    trainers_stop = EarlyStopping(monitor="val/loss", patience=1)
    bar = ProgressBar()
    trainer = make_trainer(max_epochs=1, callbacks=[trainers_stop, bar], enable_checkpointing=True,
                           enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(WithCallbacks(), regression_loader(16, 8), regression_loader(16, 8))
    kinds = [type(cb).__name__ for cb in trainer.callbacks]
    assert kinds == ["ProgressBar", "EarlyStopping", "ModelCheckpoint"]
    assert trainer.callbacks[1].patience == 7 and trainer.checkpoint_callback.dirpath.endswith("mine")
    assert os.listdir("mine")


def test_on_train_batch_end_gets_the_step_output_as_a_detached_dict(make_trainer):
    received = []

    class Outputs(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.returned = loss
            return loss if batch_idx % 2 == 0 else {"loss": loss, "extra": batch_idx}

        def on_train_batch_end(self, outputs, batch, batch_idx):
            received.append((outputs, self.returned))

    make_trainer(max_epochs=1, accumulate_grad_batches=2, **LEAN).fit(Outputs(), regression_loader(32, 8))
    assert [sorted(o) for o, _ in received] == [["loss"], ["extra", "loss"]] * 2
    for outputs, returned in received:  # as returned: not divided by the accumulation, detached
        assert torch.equal(outputs["loss"], returned.detach()) and not outputs["loss"].requires_grad


def test_validate_test_predict_load_best_last_or_a_path(make_trainer):
    checkpoint = ModelCheckpoint(dirpath="ckpts", monitor="val/loss", save_last=True)
    model = BoringModel(lr=0.05)
    trainer = make_trainer(max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True, num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(32, 8), regression_loader(32, 8))
    with torch.no_grad():
        model.layer.weight.fill_(5.0)  # ruin the weights: only a loaded checkpoint gives the saved values
    (best,) = trainer.validate(ckpt_path="best", dataloaders=regression_loader(32, 8))
    assert best["val/loss"] == pytest.approx(checkpoint.best_model_score, rel=1e-6)
    assert trainer.ckpt_path == checkpoint.best_model_path
    (last,) = trainer.test(model, regression_loader(32, 8), ckpt_path="last")
    saved = torch.load(checkpoint.last_model_path, weights_only=True)["state_dict"]["layer.weight"]
    assert torch.equal(model.layer.weight, saved)
    predictions = trainer.predict(model, regression_loader(8, 8), ckpt_path=checkpoint.best_model_path)
    reference = BoringModel()
    reference.load_state_dict(torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"])
    torch.testing.assert_close(predictions[0], reference(RandomRegression(8).x), rtol=0, atol=0)


def test_ckpt_path_errors_say_what_is_missing(make_trainer):
    trainer = make_trainer(max_epochs=1, **LEAN)
    with pytest.raises(ValueError, match=r"trainer\.validate\(ckpt_path='best'\): there is no ModelCheckpoint"):
        trainer.validate(BoringModel(), regression_loader(), ckpt_path="best")
    with pytest.raises(FileNotFoundError, match=r"trainer\.test\(ckpt_path='nope\.ckpt'\): no such file"):
        trainer.test(BoringModel(), regression_loader(), ckpt_path="nope.ckpt")
    with pytest.raises(ValueError, match=r"trainer\.predict\(ckpt_path='last'\): no checkpoint in"):
        trainer.predict(BoringModel(), regression_loader(), ckpt_path="last")
    with pytest.raises(TypeError, match=r"trainer\.test\(\): no model\. Pass the model"):
        trainer.test(dataloaders=regression_loader())


class Writer(BasePredictionWriter):
    def __init__(self, interval):
        super().__init__(interval)
        self.batches, self.epochs = [], []

    def write_on_batch_end(self, trainer, module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append((batch_indices, prediction, batch[0]))

    def write_on_epoch_end(self, trainer, module, predictions, batch_indices):
        self.epochs.append((predictions, batch_indices))


def test_prediction_writer_gets_each_batch_with_its_dataset_indices_and_nothing_is_returned(make_trainer):
    data = RandomRegression(20)
    loader = DataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(1))
    writer = Writer("batch_and_epoch")
    assert make_trainer(callbacks=[writer], **LEAN).predict(BoringModel(), loader, return_predictions=False) is None
    assert len(writer.batches) == 4 and sorted(i for b in writer.batches for i in b[0]) == list(range(20))
    for indices, prediction, x in writer.batches:  # the indices are the samples of this very batch
        assert torch.equal(x, data.x[indices]) and prediction.shape == (len(indices), 1)
    ((predictions, indices),) = writer.epochs  # the epoch writer still gets everything
    assert [len(p) for p in predictions] == [6, 6, 6, 2] and indices == [b[0] for b in writer.batches]


def test_batch_writer_with_return_predictions_false_keeps_nothing(make_trainer):
    writer = Writer("batch")
    trainer = make_trainer(callbacks=[writer], **LEAN)
    assert trainer.predict(BoringModel(), regression_loader(16, 8), return_predictions=False) is None
    assert trainer.predictions is None and len(writer.batches) == 2
    with pytest.raises(ValueError, match=r"BasePredictionWriter\(write_interval='step'\): expected one of"):
        BasePredictionWriter("step")


@pytest.mark.parametrize("settings, expected", [({"max_epochs": 2, "accumulate_grad_batches": 3}, 8),
                                                ({"max_epochs": 2, "max_steps": 5, "accumulate_grad_batches": 3}, 5),
                                                ({"max_epochs": 3, "limit_train_batches": 4}, 12)])
def test_estimated_stepping_batches_is_the_number_of_optimizer_steps(settings, expected, make_trainer):
    class OneCycle(BoringModel):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
            self.total = self.trainer.estimated_stepping_batches
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=self.total)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    model, trainer = OneCycle(), make_trainer(**settings, **LEAN)
    trainer.fit(model, regression_loader(80, 8))  # 10 batches
    assert model.total == expected == trainer.global_step  # OneCycleLR raises if stepped past its total
    with pytest.raises(RuntimeError, match="estimated_stepping_batches is known during fit only"):
        trainer.estimated_stepping_batches


def test_num_val_batches_and_log_dir(make_trainer):
    class TwoLoaders(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1, limit_val_batches=3, logger=CSVLogger("logs", name="exp", version=0), **LEAN)
    trainer.fit(TwoLoaders(), regression_loader(16, 8), [regression_loader(64, 8), regression_loader(16, 8)])
    assert trainer.num_val_batches == [3, 2]
    assert trainer.log_dir == os.path.join("logs", "exp", "version_0")


def test_interrupted_is_set_by_a_keyboard_interrupt(make_trainer):
    class CtrlC(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.global_step == 1:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1, **LEAN)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(CtrlC(), regression_loader(32, 8))
    assert trainer.interrupted
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert not trainer.interrupted


class Saved(BoringModel):
    def __init__(self, width: int = 4, lr: float = 0.1, note: str = "a"):
        super().__init__(in_dim=width, lr=lr)
        self.save_hyperparameters()
        self.loaded = False

    def on_load_checkpoint(self, checkpoint):
        self.loaded = True


def test_load_from_checkpoint_rebuilds_from_hparams_with_overrides(make_trainer):
    model = Saved(width=3, note="b")
    trainer = make_trainer(max_epochs=1, **LEAN)
    trainer.fit(model, DataLoader(RandomRegression(16, in_dim=3), batch_size=8))
    trainer.save_checkpoint("m.ckpt")
    loaded = Saved.load_from_checkpoint("m.ckpt", lr=0.5)
    assert (loaded.hparams.width, loaded.hparams.lr, loaded.hparams.note, loaded.loaded) == (3, 0.5, "b", True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(Exception, match="does not match Saved: shape mismatches"):
        Saved.load_from_checkpoint("m.ckpt", width=5)

    class FromNamespace(BoringModel):
        def __init__(self, hp):
            super().__init__(lr=hp.lr)
            self.save_hyperparameters(hp)

    first = FromNamespace(argparse.Namespace(lr=0.3))
    make_trainer(max_epochs=1, **LEAN).fit(first, regression_loader(8, 8))
    first.trainer.save_checkpoint("n.ckpt")
    assert FromNamespace.load_from_checkpoint("n.ckpt").hparams.lr == 0.3

    class Other(BoringModel):
        def __init__(self, depth: int = 1, width: int = 2):
            super().__init__()

    with pytest.raises(TypeError, match=r"the checkpoint's hparams \['lr'\] are not arguments of Other.__init__ "
                                        r"\(\['depth', 'width'\]\)"):
        Other.load_from_checkpoint("n.ckpt")


def test_rank_zero_only_runs_on_rank_zero(monkeypatch):
    calls = []
    report = rank_zero_only(lambda x: calls.append(x) or x)
    assert report(1) == 1
    monkeypatch.setenv("RANK", "1")
    assert report(2) is None
    monkeypatch.setenv("RANK", "0")
    assert report(3) == 3 and calls == [1, 3]


def _two_process_surface() -> list:
    rank = int(os.environ["RANK"])

    class Gathers(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            gathered = self.all_gather({"rank": torch.tensor([float(rank)]), "n": rank + 10})
            self.seen = (gathered["rank"].tolist(), gathered["n"].tolist())
            self.ranks = (self.global_rank, self.local_rank)  # as Lightning code asks: `if self.global_rank == 0`
            self.grad_gather = self.all_gather(loss, sync_grads=True)
            return self.grad_gather.sum()

    model = Gathers()
    trainer = quiet_trainer(max_epochs=1, strategy="ddp", devices=2, use_distributed_sampler=False, **LEAN)
    trainer.fit(model, regression_loader(32, 8))
    out = [model.seen, trainer.num_training_batches, tuple(model.grad_gather.shape), model.ranks]
    try:
        quiet_trainer(max_epochs=1, strategy="ddp", devices=2, sync_batchnorm=True, **LEAN).fit(
            BoringModel(), regression_loader(16, 8))
    except ValueError as err:
        out.append(str(err))
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_all_gather_use_distributed_sampler_and_sync_batchnorm_on_two_processes():
    for rank, (seen, num_batches, shape, ranks, error) in enumerate(run_distributed(_two_process_surface,
                                                                                  world_size=2)):
        assert seen == ([[0.0], [1.0]], [10, 11]) and shape == (2,)
        assert ranks == (rank, rank)  # the module's global_rank and local_rank (one machine)
        assert num_batches == 4  # use_distributed_sampler=False: each process reads the whole loader
        assert "sync_batchnorm=True) with 2 CPU processes: torch's SyncBatchNorm only runs on GPU" in error


class DictBatches(torch.utils.data.Dataset):
    def __init__(self, n=16):
        self.data = RandomRegression(n)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"x": x, "y": y}


class TransferHooks(BoringModel):
    def on_before_batch_transfer(self, batch, dataloader_idx):
        return batch["x"], batch["y"]  # a dict from the loader becomes the (x, y) the steps expect

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return 2 * x, y


def test_batch_transfer_hooks_run_in_order_for_every_stage_and_the_datamodules_come_first(make_trainer):
    from trainer import DataModule

    model = TransferHooks()
    trainer = make_trainer(max_epochs=2, **LEAN)
    trainer.fit(model, DataLoader(DictBatches(), batch_size=8))
    data = RandomRegression(16)
    reference = BoringModel()
    make_trainer(max_epochs=2, **LEAN).fit(reference, DataLoader(list(zip(2 * data.x, data.y)), batch_size=8))
    assert torch.equal(model.layer.weight, reference.layer.weight)
    (prediction,) = trainer.predict(model, DataLoader(DictBatches(8), batch_size=8))
    torch.testing.assert_close(prediction, model(2 * data.x[:8]), rtol=0, atol=0)

    class Triples(DataModule):
        def on_after_batch_transfer(self, batch, dataloader_idx):
            x, y = batch
            return 3 * x, y

        def val_dataloader(self):
            return DataLoader(DictBatches(8), batch_size=8)

    (result,) = trainer.validate(model, datamodule=Triples())  # the module's before, the datamodule's after
    small = RandomRegression(8)
    expected = torch.nn.functional.mse_loss(model(3 * small.x), small.y).item()
    assert result["val/loss"] == pytest.approx(expected, rel=1e-6)


def test_test_without_a_model_after_fit_uses_the_best_checkpoint_and_prints_a_table(caplog, make_trainer):
    import logging

    checkpoint = ModelCheckpoint(dirpath="ckpts", monitor="val/loss")
    model = BoringModel(lr=0.05)
    trainer = make_trainer(max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True, num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(32, 8), regression_loader(32, 8))
    with torch.no_grad():
        model.layer.weight.fill_(5.0)
    with caplog.at_level(logging.INFO, logger="trainer"):
        (result,) = trainer.validate(dataloaders=regression_loader(32, 8))
    assert trainer.ckpt_path == checkpoint.best_model_path
    assert result["val/loss"] == pytest.approx(checkpoint.best_model_score, rel=1e-6)
    table = caplog.text
    assert "dataloader 0" in table and "val/loss" in table and f"{result['val/loss']:.6g}" in table
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer"):
        trainer.validate(model, regression_loader(32, 8), verbose=False)
    assert "dataloader 0" not in caplog.text


def test_lightning_mirrors_of_the_settings_and_callbacks_on_the_trainer(make_trainer):
    from trainer.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar

    settings = dict(accumulate_grad_batches=3, gradient_clip_val=0.5, gradient_clip_algorithm="value",
                    val_check_interval=0.5, check_val_every_n_epoch=2, limit_train_batches=4, limit_val_batches=0.25,
                    limit_test_batches=3, limit_predict_batches=1, num_sanity_val_steps=0)
    first, second, stop = ModelCheckpoint(monitor="val/loss"), ModelCheckpoint(save_last=True), EarlyStopping("val/loss")
    trainer = make_trainer(callbacks=[first, stop, second], **settings)
    assert {name: getattr(trainer, name) for name in settings} == settings
    assert trainer.checkpoint_callbacks == [first, second] and trainer.checkpoint_callback is first
    assert trainer.early_stopping_callbacks == [stop] and trainer.early_stopping_callback is stop
    assert trainer.root_device == torch.device("cpu")
    assert trainer.progress_bar_callback is None  # make_trainer turns the bar off
    bar = ProgressBar()
    assert make_trainer(callbacks=[bar]).progress_bar_callback is bar
    bare = make_trainer(enable_checkpointing=False)
    assert (bare.checkpoint_callbacks, bare.early_stopping_callbacks, bare.early_stopping_callback) == ([], [], None)


def test_freeze_and_unfreeze_the_whole_module(make_trainer):
    model = BoringModel()
    model.freeze()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no trainable parameters"):  # fit refuses a frozen module
        make_trainer(max_epochs=1).fit(model, regression_loader(8, 8))
    model.unfreeze()
    assert model.training and all(p.requires_grad for p in model.parameters())
    make_trainer(max_epochs=1).fit(model, regression_loader(8, 8))


def test_stage_flags_and_lightning_names_on_the_trainer(make_trainer):
    seen = []

    class Flags(BoringModel):
        def _flags(self):
            t = self.trainer
            seen.append((t.training, t.validating, t.testing, t.predicting, t.lightning_module is self,
                         t.num_devices, t.num_nodes))

        def on_train_epoch_start(self):
            self._flags()

        def on_validation_start(self):
            self._flags()

        def on_test_start(self):
            self._flags()

        def on_predict_start(self):
            self._flags()

    model, trainer = Flags(), make_trainer(max_epochs=1, **LEAN)
    trainer.fit(model, regression_loader(8, 8))
    trainer.validate(model, regression_loader(8, 8))
    trainer.test(model, regression_loader(8, 8))
    trainer.predict(model, regression_loader(8, 8))
    assert seen == [(True, False, False, False, True, 1, 1), (False, True, False, False, True, 1, 1),
                    (False, False, True, False, True, 1, 1), (False, False, False, True, True, 1, 1)]
