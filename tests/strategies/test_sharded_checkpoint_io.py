"""The sharded checkpoint directory is written whole or not at all: a failure while writing leaves an
older checkpoint of the same name untouched and no temporary directory behind; a directory without
meta.ckpt is never read as a checkpoint."""

from __future__ import annotations

import os
import re
import zlib

import pytest
import torch

from trainer.strategies.checkpoint_directories import atomic_directory
from trainer.strategies.checkpoint_io import SHARDED_META, CorruptCheckpointError, safe_load


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


def _full_disk_worker(dirpath):
    from torch.utils.data import DataLoader, TensorDataset

    from tests.strategies.test_fsdp import Block, Net
    from trainer import Trainer
    from trainer.callbacks import ModelCheckpoint
    from trainer.strategies import FSDPStrategy
    from trainer.strategies.checkpoint_io import DiskFullError

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 256, generator=g), torch.randn(16, 1, generator=g)
    trainer = Trainer(max_epochs=3, strategy=FSDPStrategy(auto_wrap_policy={Block}), logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
                      callbacks=[ModelCheckpoint(dirpath=dirpath)])
    try:
        trainer.fit(Net(256), DataLoader(TensorDataset(x, y), batch_size=4))
    except DiskFullError as err:
        return {"message": str(err), "cause": type(err.__cause__).__name__, "step": trainer.global_step}
    return {"message": None}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_during_a_sharded_save_says_so_on_every_rank_and_keeps_the_previous_checkpoint(tmp_path):
    """Real FSDP on 2 ranks into a 1.5 MB tmpfs: one checkpoint (1.2 MB of shards) fits, a second beside it
    does not. torch reports it as ``CheckpointException ... unexpected pos`` / ``No space left``."""
    import subprocess

    from tests.helpers.distributed import run_distributed
    from trainer.strategies.checkpoint_format import verify_checkpoint

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(small)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        ranks = run_distributed(_full_disk_worker, dirpath=str(small / "ckpts"))
        for rank in ranks:
            assert rank["cause"] == "CheckpointException" and rank["step"] == 4
            assert re.match(rf"No space left on '{small}/ckpts' while writing the shards of 'epoch=1-step=4\.ckpt' "
                            r"\(about 1\.\d MB needed, \d+\.\d MB free\)\. Nothing was replaced", rank["message"])
        assert os.listdir(small / "ckpts") == ["epoch=0-step=2.ckpt"]  # no partial directory left behind
        kept = str(small / "ckpts" / "epoch=0-step=2.ckpt")
        meta = safe_load(kept)
        verify_checkpoint(kept, meta)  # every shard whole: sizes and CRC-32s as written
        assert meta["global_step"] == 2
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
