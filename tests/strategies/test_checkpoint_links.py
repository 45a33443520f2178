"""Symbolic links in and to checkpoints: every loader opens (and checks) the file a link leads to,
and a link inside a checkpoint that leads out of it is refused by name, for every format.

Formats here (one process): single-file checkpoints, safetensors weights (one file and an index with
shards), ``Accelerator.save_state`` folders. The sharded formats (DeepSpeed, FSDP's DCP) run their
real loaders on 2 processes in test_checkpoint_links_sharded.py.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from trainer.strategies.checkpoint_io import UnsafeCheckpointError, safe_load
from trainer.strategies.checkpoint_links import LinkOutsideCheckpointError
from trainer.strategies.safetensors_weights import load_weights, save_weights


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# -- single-file checkpoints ------------------------------------------------------------------------
def test_a_single_file_named_through_a_linked_folder_or_a_linked_file_is_read_where_it_lies(tmp_path):
    real = tmp_path / "store"
    real.mkdir()
    torch.save({"w": torch.arange(3.0)}, real / "model.ckpt")
    (tmp_path / "folder").symlink_to(real, target_is_directory=True)  # a linked folder
    (tmp_path / "file.ckpt").symlink_to(real / "model.ckpt")  # a linked file
    for path in (tmp_path / "folder" / "model.ckpt", tmp_path / "file.ckpt"):
        assert torch.equal(safe_load(str(path))["w"], torch.arange(3.0))
        assert torch.equal(safe_load(str(path), mmap=True)["w"], torch.arange(3.0))


def test_a_payload_behind_a_linked_file_is_refused_naming_the_link_and_where_it_leads(tmp_path):
    marker = tmp_path / "pwned"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save({"w": torch.zeros(1), "payload": _Evil(str(marker))}, elsewhere / "evil.ckpt")
    (tmp_path / "last.ckpt").symlink_to(elsewhere / "evil.ckpt")
    (tmp_path / "runs").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeCheckpointError) as caught:
        safe_load(str(tmp_path / "last.ckpt"))
    message = str(caught.value)
    assert "last.ckpt" in message and f"a link to {str(elsewhere / 'evil.ckpt')!r}" in message
    assert "posix.system" in message
    with pytest.raises(UnsafeCheckpointError, match=r"\(a link to .*evil\.ckpt'\)"):
        safe_load(str(tmp_path / "runs" / "evil.ckpt"), mmap=True)
    assert not marker.exists()


# -- safetensors weights ---------------------------------------------------------------------------
def _sharded_weights(directory):
    state = {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(4)}
    names = save_weights(state, str(directory), max_shard_size=300)
    assert "model.safetensors.index.json" in names and len(names) == 5
    return state


def _link_out(path, outside):
    """Move ``path`` to ``outside`` and leave a link to it in its place."""
    os.replace(path, outside)
    os.symlink(outside, path, target_is_directory=os.path.isdir(outside))


@pytest.mark.parametrize("linked", ["model-00002-of-00004.safetensors", "model.safetensors.index.json"])
def test_a_safetensors_index_or_shard_linked_out_of_its_folder_is_refused(tmp_path, linked):
    weights = tmp_path / "weights"
    _sharded_weights(weights)
    (tmp_path / "outside").mkdir()
    _link_out(weights / linked, str(tmp_path / "outside" / linked))
    with pytest.raises(LinkOutsideCheckpointError) as caught:
        load_weights(str(weights))
    message = str(caught.value)
    assert str(weights / linked) in message and str(tmp_path / "outside" / linked) in message
    assert "outside the checkpoint" in message and "cp -rL" in message


def test_one_safetensors_file_linked_out_is_refused_and_a_linked_folder_or_a_link_inside_loads(tmp_path):
    from trainer.utils import load_checkpoint_in_model

    model = torch.nn.Linear(3, 2)
    single = tmp_path / "single"
    save_weights(model.state_dict(), str(single))
    (tmp_path / "outside").mkdir()
    _link_out(single / "model.safetensors", str(tmp_path / "outside" / "model.safetensors"))
    with pytest.raises(LinkOutsideCheckpointError, match=r"model\.safetensors' inside it is a symbolic link"):
        load_checkpoint_in_model(torch.nn.Linear(3, 2), str(single))
    # links that stay inside are followed; the folder named by the user may itself be a link
    sharded = tmp_path / "sharded"
    state = _sharded_weights(sharded)
    os.replace(sharded / "model-00003-of-00004.safetensors", sharded / "kept.safetensors")
    os.symlink("kept.safetensors", sharded / "model-00003-of-00004.safetensors")
    (tmp_path / "named").symlink_to(sharded, target_is_directory=True)
    loaded = load_weights(str(tmp_path / "named"))
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


# -- Accelerator state folders ---------------------------------------------------------------------
def _saved_state(tmp_path):
    from trainer import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 1))
    torch.nn.init.constant_(model.weight, 3.0)
    accelerator.save_state(str(tmp_path / "state"))
    return tmp_path / "state"


def test_an_accelerator_state_file_linked_out_of_its_folder_is_refused_by_load_state(tmp_path):
    from trainer import Accelerator

    state = _saved_state(tmp_path)
    (tmp_path / "outside").mkdir()
    _link_out(state / "state.ckpt", str(tmp_path / "outside" / "state.ckpt"))
    fresh = Accelerator(cpu=True)
    model = fresh.prepare(torch.nn.Linear(2, 1))
    with pytest.raises(LinkOutsideCheckpointError, match=r"state\.ckpt' inside it is a symbolic link to .*outside"):
        fresh.load_state(str(state))
    assert not torch.all(model.weight == 3.0)


def test_an_accelerator_state_folder_named_through_a_link_loads(tmp_path):
    from trainer import Accelerator

    state = _saved_state(tmp_path)
    (tmp_path / "named").symlink_to(state, target_is_directory=True)
    fresh = Accelerator(cpu=True)
    model = fresh.prepare(torch.nn.Linear(2, 1))
    fresh.load_state(str(tmp_path / "named"))
    assert torch.all(model.weight == 3.0)


# -- the resolver itself ---------------------------------------------------------------------------
def test_a_linked_folder_at_any_depth_of_a_checkpoint_directory_is_named(tmp_path):
    from trainer.strategies.checkpoint_links import checkpoint_directory

    ckpt = tmp_path / "ckpt"
    (ckpt / "a" / "b").mkdir(parents=True)
    (ckpt / "a" / "b" / "x.pt").write_bytes(pickle.dumps(1))
    (tmp_path / "outside").mkdir()
    (ckpt / "a" / "inner").symlink_to(ckpt / "a" / "b", target_is_directory=True)  # inside: fine
    (ckpt / "a" / "self").symlink_to(ckpt, target_is_directory=True)  # a loop back to the root: inside
    assert checkpoint_directory(str(ckpt)) == os.path.realpath(ckpt)
    (ckpt / "a" / "b" / "engine").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(LinkOutsideCheckpointError) as caught:
        checkpoint_directory(str(ckpt))
    assert str(ckpt / "a" / "b" / "engine") in str(caught.value) and str(tmp_path / "outside") in str(caught.value)
    os.remove(ckpt / "a" / "b" / "engine")
    (ckpt / "dangling.pt").symlink_to(tmp_path / "nowhere.pt")  # a dangling link out: refused too
    with pytest.raises(LinkOutsideCheckpointError, match="dangling"):
        checkpoint_directory(str(ckpt))
