"""Checkpoints, last.ckpt, an Accelerator state folder and exported weights get the modes the user's
umask gives new files (0666 & ~umask) and folders (0777 & ~umask), as ``open``/``mkdir`` would, not the
owner-only 0600/0700 of ``mkstemp``/``mkdtemp`` they are written through: under umask 022 a teammate
or a serving job can read them; under 077 nobody else can."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from tests.helpers import BoringModel, regression_loader
from trainer import Accelerator
from trainer.callbacks import ModelCheckpoint


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask{m:03o}")
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_checkpoints_last_ckpt_and_exported_weights_follow_the_umask(tmp_path, make_trainer, umask):
    trainer = make_trainer(max_epochs=2, default_root_dir=str(tmp_path),
                           callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, save_last=True)])
    trainer.fit(BoringModel(), regression_loader())
    trainer.save_model(str(tmp_path / "final"))
    trainer.save_checkpoint(str(tmp_path / "manual.ckpt"))
    files = [*sorted((tmp_path / "ckpt").glob("*.ckpt")), *sorted((tmp_path / "final").iterdir()),
             tmp_path / "manual.ckpt"]
    assert any(f.name == "last.ckpt" for f in files) and any(f.suffix == ".safetensors" for f in files)
    assert {f.name: oct(mode_of(f)) for f in files} == {f.name: oct(0o666 & ~umask) for f in files}


def test_an_accelerator_state_folder_and_its_files_follow_the_umask(tmp_path, umask):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    folder = accelerator.save_state(str(tmp_path / "state"))
    assert oct(mode_of(folder)) == oct(0o777 & ~umask)
    inside = sorted(p for p in os.listdir(folder))
    assert inside and {p: oct(mode_of(os.path.join(folder, p))) for p in inside} == \
        {p: oct(0o666 & ~umask) for p in inside}
    accelerator.save_model(model, str(tmp_path / "weights"))
    assert oct(mode_of(tmp_path / "weights" / "model.safetensors")) == oct(0o666 & ~umask)
