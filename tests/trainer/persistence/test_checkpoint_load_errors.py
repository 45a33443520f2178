"""A checkpoint that fails to load names the file, what was expected, what was found and the fix, at
every load door -- fit(ckpt_path=...), load_from_checkpoint, Accelerator.load_state, trainer
merge-weights -- and the file (or directory) is left byte for byte as it was, mtime included."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from trainer import Accelerator
from trainer.cli import merge_weights
from trainer.strategies.checkpoint_io import CheckpointError
from tests import ROOT
from tests.helpers.models import BoringModel, regression_loader
from tests.helpers.trainers import quiet_trainer

FIXTURES = str(ROOT / "tests" / "fixtures" / "checkpoint_v1")


class _Code:
    def __reduce__(self):
        return (os.system, ("echo never",))


def _save(obj, path):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One of each kind of wrong file, written once (the tests must leave them as they are)."""
    root = tmp_path_factory.mktemp("bad")
    trainer = quiet_trainer(max_steps=2, max_epochs=1, enable_checkpointing=False, default_root_dir=str(root))
    trainer.fit(BoringModel(), regression_loader(16, 4))
    trainer.save_checkpoint(str(root / "trainer.ckpt"))
    whole = (root / "trainer.ckpt").read_bytes()
    (root / "empty.ckpt").write_bytes(b"")
    (root / "truncated.ckpt").write_bytes(whole[:len(whole) // 2])
    (root / "random.ckpt").write_bytes(bytes(range(256)) * 16)
    _save(BoringModel().state_dict(), root / "weights.pt")
    _save({"format_version": 1, "state_dict": {}, "x": _Code()}, root / "unsafe.ckpt")
    _save({"pytorch-lightning_version": "2.4.0", "epoch": 0, "global_step": 2, "state_dict": BoringModel().state_dict(),
           "optimizer_states": [], "lr_schedulers": [], "callbacks": {}}, root / "lightning.ckpt")
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 1)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    accelerator.save_state(str(root / "acc_state"))
    shutil.copy(root / "acc_state" / "state.ckpt", root / "accelerator_state.ckpt")
    # format 1 (before save_state wrote the Trainer's names): models, optimizers, ... and no state_dict
    shutil.copy(os.path.join(FIXTURES, "accelerator_state", "state.ckpt"), root / "accelerator_state_v1.ckpt")
    folder = root / "accelerate_folder"  # what Hugging Face Accelerate's save_state writes
    folder.mkdir()
    from safetensors.torch import save_file

    save_file(BoringModel().state_dict(), str(folder / "model.safetensors"))
    (folder / "optimizer.bin").write_bytes(b"\x80\x04N.")
    (folder / "random_states_0.pkl").write_bytes(b"\x80\x04N.")
    return root


def _snapshot(path) -> dict:
    paths = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names] if os.path.isdir(path) else [path]
    out = {}
    for p in paths:
        stat = os.stat(p)
        with open(p, "rb") as f:
            out[p] = (hashlib.sha256(f.read()).hexdigest(), stat.st_size, stat.st_mtime_ns)
    return out


def _fit(path):
    quiet_trainer(max_epochs=1, enable_checkpointing=False).fit(BoringModel(), regression_loader(16, 4),
                                                               ckpt_path=str(path))


def _load_from_checkpoint(path):
    BoringModel.load_from_checkpoint(str(path))


def _validate(path):
    quiet_trainer().validate(BoringModel(), regression_loader(16, 4), ckpt_path=str(path))


def _merge(path, out):
    return merge_weights.run(argparse.Namespace(checkpoint=str(path), output=str(out), max_shard_size="10GB"))


def _load_state(directory):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 1)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    accelerator.load_state(str(directory))


CORRUPT = [  # the same message at every door (strategies/checkpoint_io.safe_load)
    ("empty.ckpt", r"'[^']*empty.ckpt' is truncated or damaged.*use an earlier checkpoint"),
    ("truncated.ckpt", r"'[^']*truncated.ckpt' is truncated or damaged.*use an earlier checkpoint"),
    ("random.ckpt", r"'[^']*random.ckpt' is damaged and cannot be read.*Use an earlier checkpoint"),
    ("unsafe.ckpt", r"Refusing to load '[^']*unsafe.ckpt': it contains a pickled Python object \(the global "
                    r"posix.system\).*torch.load\(path, weights_only=False\)"),
]
FOREIGN = [  # readable, but another kind of file: named, with the call that loads it
    ("weights.pt", r"plain weights: a state dict of 2 tensor\(s\) \(layer.weight, layer.bias\).*"
                   r"model.load_state_dict\(torch.load\('[^']*weights.pt', weights_only=True\)\)"),
    ("lightning.ckpt", r"a PyTorch Lightning checkpoint \(Lightning 2.4.0\).*\['state_dict'\]"),
    ("accelerator_state_v1.ckpt", r"an Accelerator.save_state file.*accelerator.load_state\("),
]
EXPECTED = r"expected a checkpoint written by Trainer.save_checkpoint or ModelCheckpoint"


@pytest.mark.parametrize("name, found", CORRUPT + FOREIGN)
@pytest.mark.parametrize("door", [_fit, _load_from_checkpoint, _validate])
def test_trainer_doors_name_the_file_what_was_found_and_the_fix(files, door, name, found):
    path = files / name
    before = _snapshot(path)
    with pytest.raises(CheckpointError, match=found) as info:
        door(path)
    if (name, found) in FOREIGN:
        assert re.search(f"'{re.escape(str(path))}' is not a Trainer checkpoint: it holds", str(info.value))
        assert re.search(EXPECTED, str(info.value))
    assert _snapshot(path) == before


@pytest.mark.parametrize("name, found", CORRUPT + FOREIGN + [("trainer.ckpt", None)])
def test_merge_weights_names_the_file_and_leaves_it_alone(files, tmp_path, capsys, name, found):
    path = files / name
    before = _snapshot(path)
    code = _merge(path, tmp_path / "out")
    assert _snapshot(path) == before
    if found is None:  # a Trainer checkpoint merges
        assert code == 0
        return
    assert code == 2 and not (tmp_path / "out").exists()
    assert re.search(found, capsys.readouterr().err)


@pytest.mark.parametrize("name, found", [(name, found.replace(name, "state.ckpt")) for name, found in CORRUPT] + [
    ("weights.pt", r"holds plain weights: a state dict of 2 tensor\(s\).*expected the state.ckpt that "
                   r"Accelerator.save_state writes"),
    ("lightning.ckpt", r"holds a PyTorch Lightning checkpoint"),
    ("trainer.ckpt", r"holds a Trainer checkpoint \(Trainer.save_checkpoint / ModelCheckpoint\).*expected the "
                     r"state.ckpt that Accelerator.save_state writes.*trainer.fit\(model, \.\.\., ckpt_path="),
])
def test_accelerator_load_state_names_the_file_what_was_found_and_the_fix(files, tmp_path, name, found):
    directory = tmp_path / "state"
    directory.mkdir()
    shutil.copy(files / name, directory / "state.ckpt")
    before = _snapshot(directory)
    with pytest.raises(CheckpointError, match=found):
        _load_state(directory)
    assert _snapshot(directory) == before


def test_accelerator_load_state_of_a_hugging_face_accelerate_folder(files):
    folder = files / "accelerate_folder"
    before = _snapshot(folder)
    with pytest.raises(FileNotFoundError, match=r"load_state\('[^']*accelerate_folder'\): it holds no state.ckpt: "
                                                r"found a Hugging Face Accelerate checkpoint folder \(model.safetensors, "
                                                r"optimizer.bin, random_states_0.pkl\).*safetensors.torch.load_file"):
        _load_state(folder)
    with pytest.raises(CheckpointError, match=r"'[^']*accelerate_folder' is a directory without meta.ckpt.*"
                                              r"Hugging Face Accelerate checkpoint folder"):
        _fit(folder)
    assert _snapshot(folder) == before


def test_a_state_directory_given_to_fit_and_a_file_given_to_load_state(files):
    with pytest.raises(CheckpointError, match=r"'[^']*acc_state' is a directory without meta.ckpt.*an "
                                              r"Accelerator.save_state directory \(state.ckpt\).*"
                                              r"accelerator.load_state\("):
        _fit(files / "acc_state")
    with pytest.raises(FileNotFoundError, match=r"load_state\('[^']*trainer.ckpt'\): that is a file; expected the "
                                                r"directory save_state wrote"):
        _load_state(files / "trainer.ckpt")


def test_a_resume_that_fails_after_reading_the_weights_leaves_the_file_alone(files, tmp_path):
    """The weights and optimizer state are read from the memory-mapped file before a later refusal
    (here: the optimizer does not fit); neither that nor a successful resume writes to it."""
    path = tmp_path / "mid.ckpt"
    shutil.copy(files / "trainer.ckpt", path)
    before = _snapshot(path)

    class TwoGroups(BoringModel):
        def configure_optimizers(self):
            return torch.optim.SGD([{"params": [self.layer.weight]}, {"params": [self.layer.bias]}], lr=0.1)

    with pytest.raises(CheckpointError, match=r"the optimizer state does not fit"):
        quiet_trainer(max_epochs=1, enable_checkpointing=False).fit(TwoGroups(), regression_loader(16, 4),
                                                                   ckpt_path=str(path))
    assert _snapshot(path) == before
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=False)
    trainer.fit(BoringModel(), DataLoader(regression_loader(16, 4).dataset, batch_size=4), ckpt_path=str(path))
    assert trainer.global_step == 8 and _snapshot(path) == before  # trained on from it, the file as it was


def test_load_from_checkpoint_and_merge_weights_of_a_missing_path(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=r"BoringModel.load_from_checkpoint\('[^']*nope.ckpt'\): no such file"
                                                r".*best_model_path"):
        _load_from_checkpoint(missing)
    assert _merge(missing, tmp_path / "out") == 2
    assert re.search(r"trainer merge-weights: '[^']*nope.ckpt': no such file or directory", capsys.readouterr().err)


def test_an_accelerator_state_missing_fields_names_them(files, tmp_path):
    from trainer.strategies.checkpoint_io import atomic_save, safe_load

    directory = tmp_path / "state"
    shutil.copytree(os.path.join(FIXTURES, "accelerator_state"), directory)  # format 1
    state = safe_load(str(directory / "state.ckpt"))
    del state["rng"], state["step"]
    atomic_save(state, str(directory / "state.ckpt"))
    before = _snapshot(directory)
    with pytest.raises(CheckpointError, match=r"state.ckpt' is an Accelerator state without step, rng; expected every "
                                              r"field save_state writes"):
        _load_state(directory)
    assert _snapshot(directory) == before
    shutil.rmtree(directory)
    shutil.copytree(files / "acc_state", directory)  # format 2: the first missing field is named
    state = safe_load(str(directory / "state.ckpt"))
    del state["accelerator"]["step"]
    atomic_save(state, str(directory / "state.ckpt"))
    with pytest.raises(CheckpointError, match=r"field 'accelerator.step' is missing"):
        _load_state(directory)
