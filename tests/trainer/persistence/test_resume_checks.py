"""Crafted checkpoint fields that have the right type but a value no run of this configuration writes
are refused before anything is restored, naming the field, the value and what this run expects.

Found by fault probes: ``loops.batch_idx = 10**12`` was trained on as if the epoch were done,
``loops.current_epoch = 10**9`` made fit return at once without a word, and an optimizer param
group's ``lr = "abc"`` failed later with a raw ``TypeError``.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import LEAN
from trainer.persistence.resume_checks import CheckpointMismatchError


@pytest.fixture
def saved(make_trainer, tmp_path):
    """A checkpoint at the end of epoch 2 of a run with 4 batches per epoch."""
    trainer = make_trainer(max_epochs=2, **LEAN)
    trainer.fit(BoringModel(), regression_loader(32, 8))
    path = str(tmp_path / "good.ckpt")
    trainer.save_checkpoint(path)
    return path


def _crafted(saved, tmp_path, edit):
    ckpt = torch.load(saved, weights_only=True)
    edit(ckpt)
    path = str(tmp_path / "crafted.ckpt")
    torch.save(ckpt, path)
    return path


def _resume(make_trainer, path, max_epochs=3, **kw):
    model = BoringModel(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(max_epochs=max_epochs, **LEAN, **kw)
    with pytest.raises(CheckpointMismatchError) as caught:
        trainer.fit(model, regression_loader(32, 8), ckpt_path=path)
    return str(caught.value), all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _mid_epoch(ckpt, batch_idx, world_size=1):
    ckpt["loops"].update(batch_idx=batch_idx, epoch_trained=False, current_epoch=1)
    ckpt["metadata"]["world_size"] = world_size


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_batch_idx_beyond_the_epoch_is_refused(make_trainer, saved, tmp_path, world_size):
    path = _crafted(saved, tmp_path, lambda c: _mid_epoch(c, 10**12, world_size))
    message, _ = _resume(make_trainer, path)
    assert "field 'loops.batch_idx' holds int 1000000000000" in message
    if world_size == 1:
        assert "expected at most 4, the 4 batches in an epoch of this run" in message
    else:  # saved by 2 processes: 32 samples, 16 a process, 2 batches of 8
        assert "expected at most 2, the 2 batches per process an epoch of its 32 samples has on 2 process(es)" \
            in message


def test_a_batch_idx_within_the_epoch_still_resumes(make_trainer, saved, tmp_path):
    path = _crafted(saved, tmp_path, lambda c: _mid_epoch(c, 4))  # == the epoch's length: its end
    trainer = make_trainer(max_epochs=3, **LEAN)
    trainer.fit(BoringModel(), regression_loader(32, 8), ckpt_path=path)
    assert trainer.current_epoch == 3


def test_an_epoch_past_max_epochs_is_refused_before_anything_is_restored(make_trainer, saved, tmp_path):
    path = _crafted(saved, tmp_path, lambda c: c["loops"].update(current_epoch=10**9))
    message, untouched = _resume(make_trainer, path)
    assert "field 'loops.current_epoch' holds int 1000000000; expected at most max_epochs=3 of this run" in message
    assert untouched


def test_a_checkpoint_that_finished_max_epochs_says_fit_trains_nothing(make_trainer, saved, caplog):
    trainer = make_trainer(max_epochs=2, **LEAN)
    with caplog.at_level(logging.INFO, logger="trainer"):
        trainer.fit(BoringModel(), regression_loader(32, 8), ckpt_path=saved)
    assert trainer.global_step == 8
    assert "max_epochs=2 is already reached and fit trains nothing" in caplog.text


@pytest.mark.parametrize("key, value, expected", [
    ("lr", "abc", "expected a number, as in this run's optimizer"),
    ("lr", math.nan, "expected a finite number"),
    ("lr", -1.0, "expected a number >= 0"),
    ("weight_decay", math.inf, "expected a finite number"),
    ("nesterov", 1, "expected True or False"),
])
def test_an_optimizer_setting_of_the_wrong_kind_is_refused_before_anything_is_restored(
        make_trainer, saved, tmp_path, key, value, expected):
    path = _crafted(saved, tmp_path, lambda c: c["optimizer_states"][0]["param_groups"][0].update({key: value}))
    message, untouched = _resume(make_trainer, path)
    assert f"field 'optimizer_states[0].param_groups[0].{key}' holds {type(value).__name__} {value!r}; {expected}" \
        in message
    assert "This run's SGD has" in message
    assert untouched
