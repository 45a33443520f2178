"""Checkpoints written by an earlier version still load: the format-1 files in
tests/fixtures/checkpoint_v1 (written by its make.py with the code of that day, never rewritten)
are read by today's code, and every value they hold comes back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests import ROOT
from tests.fixtures.checkpoint_v1.make import data, tiny_module, values
from trainer import Accelerator

FIXTURES = ROOT / "tests" / "fixtures" / "checkpoint_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    """The fixtures, copied: a load may recover or clean beside a checkpoint; the originals stay as written."""
    shutil.copytree(FIXTURES, tmp_path / "v1", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return tmp_path / "v1"


def test_a_format_1_trainer_checkpoint_restores_every_value(copies: Path, tmp_path: Path, make_trainer):
    module = tiny_module()
    # max_steps: the step it was saved at, so nothing is left to train
    trainer = make_trainer(default_root_dir=str(tmp_path), max_steps=3, enable_checkpointing=False,
                           enable_model_summary=False)
    trainer.fit(module, DataLoader(data(), batch_size=2), ckpt_path=str(copies / "trainer.ckpt"))
    expected = EXPECTED["trainer"]
    assert trainer.global_step == expected["global_step"] == 3
    assert values(module.layer, trainer.optimizers[0]) == {k: expected[k] for k in ("weight", "bias", "momentum",
                                                                                     "lr")}


def test_resuming_a_format_1_checkpoint_equals_the_uninterrupted_run(copies: Path, tmp_path: Path, make_trainer):
    whole = tiny_module()
    make_trainer(default_root_dir=str(tmp_path / "whole"), max_steps=4, enable_checkpointing=False,
                 enable_model_summary=False).fit(whole, DataLoader(data(), batch_size=2))
    resumed = tiny_module()
    with torch.no_grad():  # only the checkpoint's weights can make it equal
        for p in resumed.parameters():
            p.zero_()
    make_trainer(default_root_dir=str(tmp_path / "resumed"), max_steps=4, enable_checkpointing=False,
                 enable_model_summary=False).fit(resumed, DataLoader(data(), batch_size=2),
                                                    ckpt_path=str(copies / "trainer.ckpt"))
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_format_1_accelerator_state_restores_every_value(copies: Path):
    accelerator = Accelerator(cpu=True)
    module = tiny_module()
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    model, opt, sched = accelerator.prepare(module, opt, sched)
    accelerator.load_state(str(copies / "accelerator_state"))
    expected = EXPECTED["accelerator"]
    assert values(accelerator.unwrap_model(model).layer, opt.optimizer) == {
        k: expected[k] for k in ("weight", "bias", "momentum", "lr")}
    assert accelerator.step == expected["step"] and sched.scheduler.last_epoch == 3


def test_the_fixtures_are_the_files_make_py_wrote():
    """A guard against regenerating them with newer code: format 1, written by the version of the day."""
    from trainer.strategies.checkpoint_io import safe_load

    for path in (FIXTURES / "trainer.ckpt", FIXTURES / "accelerator_state" / "state.ckpt"):
        ckpt = safe_load(str(path))
        assert ckpt["format_version"] == 1 and ckpt["metadata"]["trainer_version"]
