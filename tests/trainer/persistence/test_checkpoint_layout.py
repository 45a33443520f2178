"""Hand-made or edited single-file checkpoints: every door names the wrong field, nothing is modified,
and ``ckpt_path="last"`` passes over such a file to the newest whole checkpoint."""

from __future__ import annotations

import copy
import hashlib
import os

import pytest
import torch

from trainer import Trainer
from trainer.callbacks import ModelCheckpoint
from trainer.persistence.layout import MalformedCheckpointError
from trainer.strategies.checkpoint_io import CorruptCheckpointError, atomic_save, safe_load
from tests.helpers import BoringModel, regression_loader


def _quiet(tmp_path, **kw) -> Trainer:
    kw.setdefault("enable_checkpointing", False)
    return Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=str(tmp_path), **kw)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    where = tmp_path_factory.mktemp("good")
    trainer = _quiet(where, max_steps=3)
    trainer.fit(BoringModel(), regression_loader())
    trainer.save_checkpoint(str(where / "good.ckpt"))
    return safe_load(str(where / "good.ckpt"))


def _set(*keys, value):
    def edit(ckpt):
        for key in keys[:-1]:
            ckpt = ckpt[key]
        ckpt[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(ckpt):
        for key in keys[:-1]:
            ckpt = ckpt[key]
        del ckpt[keys[-1]]
    return edit


CRAFTED = {  # the examples first, then one per kind of field
    "format_version as a string": (_set("format_version", value="1"), r"'format_version' holds str '1'; expected a "
                                                                      r"whole number >= 1 \(this version writes 2\)"),
    "no loops": (_drop("loops"), r"field 'loops' is missing"),
    "metadata not a dict": (_set("metadata", value="x"), r"'metadata' holds str 'x'; expected a dict"),
    "junk rng": (_set("rng", value={0: {"python": 5, "torch": torch.zeros(3)}}),
                 r"'rng\[0\]\.python' holds int 5; expected random\.getstate\(\)"),
    "rng torch state of floats": (lambda c: c["rng"][0].__setitem__("torch", torch.zeros(3)),
                                  r"'rng\[0\]\.torch' holds a tensor of shape \(3,\) and dtype torch\.float32; "
                                  r"expected a torch\.uint8 tensor"),
    "negative global_step": (_set("loops", "global_step", value=-4), r"'loops\.global_step' holds int -4; expected a "
                                                                     r"whole number >= 0"),
    "negative top-level step": (_set("global_step", value=-1), r"'global_step' holds int -1"),
    "format_version True": (_set("format_version", value=True), r"'format_version' holds bool True"),
    "format_version 0": (_set("format_version", value=0), r"'format_version' holds int 0"),
    "weights not a dict": (_set("state_dict", value=[1]), r"'state_dict' holds list \[1\]; expected a dict"),
    "a weight that is not a tensor": (_set("state_dict", "layer.weight", value="x"),
                                      r"field \"state_dict\['layer\.weight'\]\" holds str 'x'; expected a tensor"),
    "optimizer states not a list": (_set("optimizer_states", value="x"), r"'optimizer_states' holds str 'x'; "
                                                                         r"expected a list"),
    "a loop counter missing": (_drop("loops", "batches_seen"), r"'loops\.batches_seen' is missing"),
    "a loop flag not a bool": (_set("loops", "should_stop", value="no"), r"'loops\.should_stop' holds str 'no'; "
                                                                         r"expected True or False"),
    "callbacks not a dict": (_set("callbacks", value=[1]), r"'callbacks' holds list \[1\]; expected a dict"),
    "schedulers not a list": (_set("lr_schedulers", value=3), r"'lr_schedulers' holds int 3; expected a list"),
    "hparams not a dict": (_set("hparams", value="x"), r"'hparams' holds str 'x'; expected a dict"),
    "world size zero": (_set("metadata", "world_size", value=0), r"'metadata\.world_size' holds int 0"),
}


def _digest(path) -> tuple[str, float]:
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), os.stat(path).st_mtime


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_checkpoint_names_the_wrong_field_at_every_door_and_is_not_modified(tmp_path, good, case):
    edit, message = CRAFTED[case]
    content = copy.deepcopy(good)
    edit(content)
    path = str(tmp_path / "crafted.ckpt")
    atomic_save(content, path)
    before = _digest(path)
    expected = rf"{path}' is not a valid checkpoint: .*{message}.*Resume from another checkpoint"
    with pytest.raises(MalformedCheckpointError, match=expected):
        _quiet(tmp_path, max_steps=5).fit(BoringModel(), regression_loader(), ckpt_path=path)
    with pytest.raises(MalformedCheckpointError, match=expected):
        BoringModel.load_from_checkpoint(path)
    with pytest.raises(MalformedCheckpointError, match=expected):
        _quiet(tmp_path).validate(BoringModel(), regression_loader(), ckpt_path=path, verbose=False)
    assert _digest(path) == before


def test_every_checkpoint_this_library_writes_passes_the_layout_check(tmp_path, good):
    from trainer.persistence.layout import check_layout

    check_layout(good, "good.ckpt")
    weights = tmp_path / "weights"
    trainer = _quiet(tmp_path, max_steps=2, enable_checkpointing=True,
                     callbacks=[ModelCheckpoint(dirpath=str(weights), save_weights_only=True)])
    trainer.fit(BoringModel(), regression_loader())
    (written,) = os.listdir(weights)
    check_layout(safe_load(str(weights / written)), written)
    assert issubclass(MalformedCheckpointError, CorruptCheckpointError)


def test_last_passes_over_a_malformed_last_ckpt_to_the_newest_whole_checkpoint(tmp_path):
    ckpts = tmp_path / "ckpts"
    trainer = _quiet(tmp_path, max_epochs=2, enable_checkpointing=True,
                     callbacks=[ModelCheckpoint(dirpath=str(ckpts), save_top_k=-1, save_last=True)])
    trainer.fit(BoringModel(), regression_loader())
    assert sorted(os.listdir(ckpts)) == ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "last.ckpt"]
    last = str(ckpts / "last.ckpt")
    content = safe_load(last)
    content["loops"]["global_step"] = -1
    os.unlink(last)  # last.ckpt is a hard link to epoch=1's file: give it its own (bad) content
    atomic_save(content, last)
    resumed = _quiet(tmp_path, max_epochs=2, enable_checkpointing=True,
                     callbacks=[ModelCheckpoint(dirpath=str(ckpts), save_top_k=-1, save_last=True)])
    with pytest.warns(UserWarning, match=r"skipping a damaged checkpoint.*last\.ckpt' is not a valid checkpoint: "
                                         r"field 'loops\.global_step' holds int -1"):
        resumed.fit(model := BoringModel(), regression_loader(), ckpt_path="last")
    assert resumed.global_step == 16  # resumed from the end of epoch 1: nothing left to train
    kept = safe_load(str(ckpts / "epoch=1-step=16.ckpt"))["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())


def test_load_from_checkpoint_takes_weights_from_a_mid_epoch_checkpoint_of_any_world_size(tmp_path, good):
    content = copy.deepcopy(good)
    assert content["loops"]["batch_idx"] == 3  # saved inside epoch 0
    content["metadata"]["world_size"] = 2
    path = str(tmp_path / "two.ckpt")
    atomic_save(content, path)
    model = BoringModel.load_from_checkpoint(path)  # only weights: the world size that saved them is irrelevant
    assert torch.equal(model.layer.weight, good["state_dict"]["layer.weight"])


def test_a_sharded_checkpoints_meta_needs_no_state_dict():
    """A sharded format leaves the weights in the shards: meta.ckpt has no state_dict, and is whole."""
    from trainer.persistence.layout import check_layout

    check_layout({"format_version": 1, "metadata": {"world_size": 2}, "sharded": "fsdp-dcp"}, "meta.ckpt")
    with pytest.raises(MalformedCheckpointError, match="field 'state_dict' is missing"):
        check_layout({"format_version": 1, "metadata": {"world_size": 2}}, "one-file.ckpt")
