"""Errors inside a step say what the batch was; a device mismatch names every device and the fix;
an empty batch is named as such; a callback's failing state_dict is attributed to that callback."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from trainer.callbacks import Callback, ModelCheckpoint
from tests.helpers.trainers import LEAN


class Net(TrainModule):
    def __init__(self, stray_device: str | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.stray_device = stray_device

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.layer(x)
        if self.stray_device:  # a tensor made inside the step, on the wrong device
            out = out + torch.zeros(1, device=self.stray_device)
        return ((out - y) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val", (self.layer(x) + torch.zeros(1, device=self.stray_device)).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _notes(err):
    return "\n".join(getattr(err, "__notes__", []))


def test_a_batch_of_strings_is_named_in_the_users_own_error(make_trainer):
    with pytest.raises(ValueError, match="too many values to unpack") as info:
        make_trainer(max_epochs=1, **LEAN).fit(Net(), [["a", "b", "c"]])
    assert "Net.training_step got batch_idx 0 with batch = a list of 3 (batch[0]: str 'a'" in _notes(info.value)


def test_a_device_mismatch_names_the_devices_and_the_fix(make_trainer):
    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.randn(4, 1)), batch_size=2)
    with pytest.raises(RuntimeError) as info:
        make_trainer(max_epochs=1, **LEAN).fit(Net(stray_device="meta"), loader)
    note = _notes(info.value)
    assert "A device mismatch in Net.training_step (batch_idx 0): the module's parameters are on cpu" in note
    assert "batch[0] on cpu, batch[1] on cpu" in note and "device=self.device" in note


def test_a_device_mismatch_in_validation_step_is_explained_too(make_trainer):
    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.randn(4, 1)), batch_size=2)
    with pytest.raises(RuntimeError) as info:
        make_trainer(max_epochs=1, **LEAN).validate(Net(stray_device="meta"), loader)
    assert "A device mismatch in Net.validation_step (batch_idx 0)" in _notes(info.value)


def test_an_empty_batch_is_named_before_it_becomes_a_nan(make_trainer):
    empty = [(torch.randn(2, 3), torch.randn(2, 1)), (torch.randn(0, 3), torch.randn(0, 1))]
    with pytest.raises(ValueError, match=r"empty batch at batch_idx 1 \(epoch 0\): a tuple of 2 \(batch\[0\]: "
                                         r"Tensor\(0, 3\) float32 on cpu"):
        make_trainer(max_epochs=1, **LEAN).fit(Net(), empty)


def test_a_callbacks_failing_state_dict_names_that_callback(tmp_path):
    class Broken(Callback):
        def state_dict(self):
            raise KeyError("cannot save me")

    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.randn(4, 1)), batch_size=2)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      callbacks=[Broken(), ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1)])
    with pytest.raises(KeyError, match="cannot save me") as info:
        trainer.fit(Net(), loader)
    assert _notes(info.value).startswith("raised in Broken.state_dict, called to collect the callbacks' states")
