"""``load_from_checkpoint`` with a checkpoint of another class, or a keyword the class does not take.

``Other.load_from_checkpoint(ckpt_of_Net)`` where ``Other.__init__(self, width=16)`` used to hand the
saved hparams dict to ``width`` and crash inside torch (``empty(): argument 'size'``); the error now
names the class that wrote the checkpoint (``metadata.module``), the hparams Other does not take and
how the weights differ (keys, shapes). A keyword override that is no argument of the class is named
as the caller's, not blamed on the checkpoint's hparams.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from trainer import TrainModule
from tests.helpers import regression_loader
from tests.helpers.trainers import LEAN


class Net(TrainModule):
    def __init__(self, hidden: int = 32, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(4, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(self.layer(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Other(TrainModule):
    def __init__(self, width=16):
        super().__init__()
        self.layer = torch.nn.Linear(4, width)


class Renamed(TrainModule):  # takes Net's arguments, but its weights have other names
    def __init__(self, hidden: int = 32, lr: float = 0.1):
        super().__init__()
        self.body = torch.nn.Linear(4, hidden)


@pytest.fixture
def net_ckpt(make_trainer, tmp_path):
    trainer = make_trainer(max_epochs=1, **LEAN)
    trainer.fit(Net(hidden=32), regression_loader(16, 8))
    trainer.save_checkpoint(str(tmp_path / "net.ckpt"))
    return str(tmp_path / "net.ckpt")


def test_a_checkpoint_of_another_class_names_the_writer_the_hparams_and_the_differing_weights(net_ckpt):
    with pytest.raises(TypeError) as caught:
        Other.load_from_checkpoint(net_ckpt)
    message = str(caught.value)
    assert f"Other.load_from_checkpoint({net_ckpt!r})" in message
    assert f"was written by {__name__}.Net" in message
    assert "hparams ['hidden', 'lr'] are not arguments of Other.__init__ (['width'])" in message
    assert "layer.weight: checkpoint (32, 4) vs model (16, 4)" in message
    assert "unexpected keys (2): head.bias, head.weight" in message
    assert "AttributeDict" not in message and "empty()" not in message


def test_a_class_taking_the_same_arguments_names_the_writer_in_the_weights_mismatch(net_ckpt):
    from trainer.strategies.checkpoint_io import CheckpointError

    with pytest.raises(CheckpointError, match=rf"net\.ckpt' \(written by {__name__}\.Net\) does not match Renamed: "
                                              r"missing keys \(2\): body\.bias, body\.weight"):
        Renamed.load_from_checkpoint(net_ckpt)
    with pytest.raises(CheckpointError) as caught:  # the class that wrote it: no "written by"
        Net.load_from_checkpoint(net_ckpt, hidden=8)
    assert "written by" not in str(caught.value) and "does not match Net: shape mismatches" in str(caught.value)


def test_an_unknown_keyword_override_is_named_as_the_callers_not_the_checkpoints(net_ckpt):
    with pytest.raises(TypeError) as caught:
        Net.load_from_checkpoint(net_ckpt, bogus=1)
    message = str(caught.value)
    assert f"Net.load_from_checkpoint({net_ckpt!r}, bogus=1): bogus=1 is not an argument of Net.__init__ " \
           "(hidden=32, lr=0.1)" in message
    assert "checkpoint's hparams" not in message
    assert Net.load_from_checkpoint(net_ckpt, lr=0.5).hparams.lr == 0.5  # a real argument still overrides


def test_one_hparams_argument_still_takes_the_saved_dict(make_trainer, tmp_path):
    class FromDict(TrainModule):
        def __init__(self, hp=None):
            super().__init__()
            self.save_hyperparameters(hp)
            self.layer = torch.nn.Linear(4, self.hparams.hidden)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = make_trainer(max_epochs=1, **LEAN)
    trainer.fit(FromDict({"hidden": 3}), regression_loader(8, 8))
    trainer.save_checkpoint(str(tmp_path / "d.ckpt"))
    loaded = FromDict.load_from_checkpoint(str(tmp_path / "d.ckpt"), extra=argparse.Namespace(a=1))
    assert loaded.hparams.hidden == 3 and loaded.layer.out_features == 3
