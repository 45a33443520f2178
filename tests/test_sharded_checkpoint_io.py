"""The sharded checkpoint directory is written whole or not at all: a failure while writing leaves an
older checkpoint of the same name untouched and no temporary directory behind; a directory without
meta.ckpt is never read as a checkpoint."""

from __future__ import annotations

import os
import zlib

import pytest
import torch

from trainer.strategies.checkpoint_io import SHARDED_META, CorruptCheckpointError, atomic_directory, safe_load


def _write(path, meta, shard_text, fail=False):
    def fill(tmp):
        with open(os.path.join(tmp, "__0_0.distcp"), "w") as f:
            f.write(shard_text)
        if fail:
            raise RuntimeError("killed while writing shards")

    atomic_directory(str(path), meta, fill, is_main=True, broadcast=lambda x: x, barrier=lambda: None)


def test_a_new_checkpoint_replaces_the_old_one_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    _write(path, {"global_step": 1}, "one")
    _write(path, {"global_step": 2}, "two")
    meta = safe_load(str(path))
    assert meta["global_step"] == 2 and meta["files"] == {"__0_0.distcp": [3, zlib.crc32(b"two")]}
    assert (path / "__0_0.distcp").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]  # no temporary or old directory left


def test_a_failure_while_writing_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    _write(path, {"global_step": 1}, "one")
    with pytest.raises(RuntimeError, match="killed while writing"):
        _write(path, {"global_step": 2}, "two", fail=True)
    assert safe_load(str(path))["global_step"] == 1 and (path / "__0_0.distcp").read_text() == "one"
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_a_directory_without_meta_is_not_a_checkpoint(tmp_path):
    partial = tmp_path / "epoch=1.ckpt"
    partial.mkdir()
    (partial / "__0_0.distcp").write_text("half")
    with pytest.raises(CorruptCheckpointError, match=f"without {SHARDED_META}: it is not a whole sharded checkpoint"):
        safe_load(str(partial))
    torch.save({"x": 1}, partial / SHARDED_META)
    assert safe_load(str(partial)) == {"x": 1}
