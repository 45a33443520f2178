"""DataModule and data from the module (issue 13, point 3): a classifier whose data comes from a
DataModule and whose accuracy is a torchmetrics Metric, checked against a plain PyTorch loop doing
the same arithmetic (SGD fp32), under 1 and 2 processes, and resumed exactly; the hooks' order,
prepare_data once per machine, the datamodule's state in the checkpoint, and the refusals."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import DataModule, TrainModule
from tests.helpers import BoringModel, regression_loader
from tests.helpers.distributed import run_distributed, trainer_order
from tests.helpers.trainers import LEAN, quiet_trainer

torchmetrics = pytest.importorskip("torchmetrics")
CLASSES, FEATURES, LR = 3, 6, 0.2


class Blobs(DataModule):
    """A 'download' in prepare_data (a file written once per machine), read back in setup."""

    def __init__(self, root: str, batch_size: int = 8, n: int = 48):
        super().__init__()
        self.save_hyperparameters()
        self.calls: list[str] = []
        self.served = 0  # state saved in the checkpoint

    @property
    def path(self) -> str:
        return os.path.join(self.hparams.root, "blobs.pt")

    def prepare_data(self):
        self.calls.append("prepare_data")
        time.sleep(0.3)  # a slow download: another process must wait for it, not read a missing file
        g = torch.Generator().manual_seed(0)
        centers = 2 * torch.randn(CLASSES, FEATURES, generator=g)
        y = torch.randint(0, CLASSES, (self.hparams.n,), generator=g)
        x = centers[y] + torch.randn(self.hparams.n, FEATURES, generator=g)
        with open(os.path.join(self.hparams.root, "prepared_by.txt"), "a") as f:
            f.write(os.environ.get("RANK", "0") + "\n")
        torch.save({"x": x, "y": y}, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        data = torch.load(self.path, weights_only=True)
        cut = self.hparams.n * 2 // 3
        self.train_set = TensorDataset(data["x"][:cut], data["y"][:cut])
        self.val_set = TensorDataset(data["x"][cut:], data["y"][cut:])

    def teardown(self, stage):
        self.calls.append(f"teardown:{stage}")

    def train_dataloader(self):
        self.calls.append("train_dataloader")
        self.served += 1
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        self.calls.append("val_dataloader")
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    test_dataloader = val_dataloader

    def predict_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def state_dict(self):
        return {"served": self.served}

    def load_state_dict(self, state):
        self.served = state["served"]


class Classifier(TrainModule):
    def __init__(self, lr: float = LR):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES))
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes=CLASSES, average="micro")

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc)

    test_step = validation_step

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).argmax(1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _plain_loop(root: str, epochs: int, batch_size: int = 8,
                distributed_order: bool = False) -> tuple[dict[str, torch.Tensor], float]:
    """The same arithmetic without the Trainer: SGD on the same batches, accuracy at the end.
    ``distributed_order``: the training samples in the order the Trainer deals them over several
    processes (shuffled by its DistributedSampler, seed 0, one permutation per epoch)."""
    data = torch.load(os.path.join(root, "blobs.pt"), weights_only=True)
    x, y = data["x"], data["y"]
    cut = len(x) * 2 // 3
    model = Classifier()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    sampler = trainer_order(range(cut)) if distributed_order else range(cut)
    for _ in range(epochs):
        order = list(sampler)
        for i in range(0, cut, batch_size):
            batch = order[i:i + batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(x[cut:]).argmax(1) == y[cut:]).float().mean().item()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, acc


def _assert_weights_equal(model: torch.nn.Module, expected: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=atol, msg=name)


def test_classifier_with_a_datamodule_equals_a_plain_loop_and_hooks_run_in_lightnings_order(tmp_path, make_trainer):
    dm, model = Blobs(str(tmp_path)), Classifier()
    trainer = make_trainer(max_epochs=3, **LEAN)
    trainer.fit(model, datamodule=dm)
    assert trainer.datamodule is dm and model.trainer.datamodule is dm and dm.trainer is trainer
    assert dm.calls == ["prepare_data", "setup:fit", "train_dataloader", "val_dataloader", "teardown:fit"]
    expected, acc = _plain_loop(str(tmp_path), epochs=3)
    _assert_weights_equal(model, expected)
    assert trainer.callback_metrics["val_acc"] == pytest.approx(acc, abs=1e-6)
    (result,) = trainer.validate(model, dm)  # positional datamodule, as Lightning allows
    assert result["val_acc"] == pytest.approx(acc, abs=1e-6)
    assert dm.calls[-4:] == ["prepare_data", "setup:validate", "val_dataloader", "teardown:validate"]
    (tested,) = trainer.test(model, datamodule=dm)
    assert tested == result and dm.calls[-1] == "teardown:test"
    predictions = torch.cat(trainer.predict(model, datamodule=dm))
    assert predictions.shape == (16,)


def test_module_own_dataloaders_are_used_when_fit_gets_none(tmp_path, make_trainer):
    class OwnData(Classifier):
        def train_dataloader(self):
            return self.dm.train_dataloader()

        def val_dataloader(self):
            return self.dm.val_dataloader()

    dm = Blobs(str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    model = OwnData()
    model.dm = dm
    make_trainer(max_epochs=2, **LEAN).fit(model)
    expected, acc = _plain_loop(str(tmp_path), epochs=2)
    _assert_weights_equal(model, expected)
    assert model.trainer.callback_metrics["val_acc"] == pytest.approx(acc, abs=1e-6)


def test_resume_with_a_datamodule_is_exact_and_restores_its_state(tmp_path, make_trainer):
    root = str(tmp_path)
    uninterrupted = Classifier()
    make_trainer(max_epochs=3, **LEAN).fit(uninterrupted, datamodule=Blobs(root))

    first_dm = Blobs(root)
    first = make_trainer(max_epochs=3, max_steps=5, **LEAN)  # stops inside the second epoch (4 batches per epoch)
    first.fit(Classifier(), datamodule=first_dm)
    first.save_checkpoint("mid.ckpt")
    saved = torch.load("mid.ckpt", weights_only=True)
    assert saved["datamodule"] == {"served": 1}
    assert saved["datamodule_hparams"] == {"root": root, "batch_size": 8, "n": 48}

    resumed, resumed_dm = Classifier(), Blobs(root)
    make_trainer(max_epochs=3, **LEAN).fit(resumed, datamodule=resumed_dm, ckpt_path="mid.ckpt")
    assert resumed_dm.served == 2  # loaded (1) before train_dataloader() was asked for again
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_reload_dataloaders_every_n_epochs_asks_the_datamodule_again(tmp_path, make_trainer):
    dm = Blobs(str(tmp_path))
    make_trainer(max_epochs=5, reload_dataloaders_every_n_epochs=2, **LEAN).fit(Classifier(), datamodule=dm)
    assert dm.calls.count("train_dataloader") == 3 and dm.calls.count("val_dataloader") == 3  # epochs 0, 2, 4
    dm = Blobs(str(tmp_path))
    make_trainer(max_epochs=5, **LEAN).fit(Classifier(), datamodule=dm)
    assert dm.calls.count("train_dataloader") == 1


def test_loaders_and_a_datamodule_together_or_none_at_all_are_refused(tmp_path, make_trainer):
    dm = Blobs(str(tmp_path))
    with pytest.raises(ValueError, match=r"trainer\.fit\(train_dataloaders=..., datamodule=...\): pass either"):
        make_trainer(max_epochs=1, **LEAN).fit(Classifier(), regression_loader(), datamodule=dm)
    with pytest.raises(ValueError, match=r"trainer\.test\(dataloaders=..., datamodule=...\): pass either"):
        make_trainer(**LEAN).test(Classifier(), regression_loader(), datamodule=dm)
    with pytest.raises(TypeError, match=r"trainer\.fit\(datamodule=dict\(...\)\): expected a trainer\.DataModule"):
        make_trainer(max_epochs=1, **LEAN).fit(Classifier(), datamodule={})
    with pytest.raises(TypeError, match=r"trainer\.test\(BoringModel\(...\)\): no data\. Pass dataloaders=..., or "
                                        r"datamodule=... with a test_dataloader\(\) method"):
        make_trainer(**LEAN).test(BoringModel())

    class TrainOnly(DataModule):
        def train_dataloader(self):
            return regression_loader(16, 8)

    with pytest.raises(TypeError, match=r"no data\. .* predict_dataloader\(\)"):
        make_trainer(**LEAN).predict(BoringModel(), datamodule=TrainOnly())
    trainer = make_trainer(max_epochs=1, **LEAN)
    trainer.fit(BoringModel(), datamodule=TrainOnly())  # no val_dataloader: no validation
    assert trainer.val_dataloaders == [] and trainer.global_step == 2
    assert dm.calls == []  # nothing ran before the refusal


def _two_process_fit(root: str) -> list:
    dm, model = Blobs(root, batch_size=4), Classifier()
    trainer = quiet_trainer(max_epochs=3, strategy="ddp", devices=2, **LEAN)
    trainer.fit(model, datamodule=dm)
    return [dm.calls, float(trainer.callback_metrics["val_acc"]),
            {k: v.tolist() for k, v in model.state_dict().items()}]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_prepare_once_and_equal_one_process_with_the_whole_batch(tmp_path):
    root = str(tmp_path)
    results = run_distributed(_two_process_fit, world_size=2, root=root)
    with open(os.path.join(root, "prepared_by.txt")) as f:
        assert f.read().split() == ["0"]  # once per machine, on local rank zero; rank 1 waited for it
    assert results[0][0][0] == "prepare_data" and "prepare_data" not in results[1][0]
    expected, acc = _plain_loop(root, epochs=3, batch_size=8, distributed_order=True)  # 2 x 4 per step == 8
    for calls, val_acc, weights in results:
        assert calls[-1] == "teardown:fit"
        assert val_acc == pytest.approx(acc, abs=1e-6)
        for name, value in weights.items():
            torch.testing.assert_close(torch.tensor(value), expected[name], rtol=0, atol=1e-6, msg=name)


def test_the_datamodules_hparams_reach_the_loggers(tmp_path, make_trainer):
    import yaml

    from trainer.callbacks import CSVLogger

    logger = CSVLogger(str(tmp_path / "logs"))
    make_trainer(max_epochs=1, logger=logger, **LEAN).fit(Classifier(lr=0.1),
                                                         datamodule=Blobs(str(tmp_path), batch_size=16))
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        logged = yaml.safe_load(f)
    assert (logged["batch_size"], logged["n"], logged["lr"]) == (16, 48, 0.1)


def test_from_datasets_serves_the_datasets_it_was_given(make_trainer):
    train, val = RandomRegressionPair()
    dm = DataModule.from_datasets(train_dataset=train, val_dataset=[val, val], batch_size=4)
    model = BoringModel()

    class TwoVal(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

    trainer = make_trainer(max_epochs=1, **LEAN)
    trainer.fit(TwoVal(), datamodule=dm)
    assert trainer.num_training_batches == 4 and trainer.num_val_batches == [2, 2]
    assert isinstance(trainer.train_dataloader.sampler, torch.utils.data.RandomSampler)
    with pytest.raises(TypeError, match=r"no data\. .*test_dataloader\(\)"):
        trainer.test(model, datamodule=dm)


def RandomRegressionPair():
    from tests.helpers import RandomRegression

    return RandomRegression(16), RandomRegression(8, seed=1)


def test_test_without_a_model_after_fit_uses_that_fits_datamodule_and_best_checkpoint(tmp_path, make_trainer):
    """Lightning's ``trainer.test(ckpt_path="best")`` after ``fit(model, datamodule=dm)``: the fitted
    module with the best checkpoint's weights, on ``dm``'s test loader (it was refused: no data)."""
    from trainer.callbacks import ModelCheckpoint

    dm = Blobs(str(tmp_path))
    trainer = make_trainer(max_epochs=2, callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpt"))], num_sanity_val_steps=0)
    trainer.fit(Classifier(), datamodule=dm)
    served = dm.calls.count("val_dataloader")  # test_dataloader is val_dataloader here
    (result,) = trainer.test(ckpt_path="best")
    assert dm.calls.count("val_dataloader") == served + 1 and "setup:test" in dm.calls
    assert 0.0 <= result["val_acc"] <= 1.0
    assert trainer.ckpt_path == trainer.checkpoint_callback.best_model_path
