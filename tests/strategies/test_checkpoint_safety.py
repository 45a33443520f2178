"""No file of a sharded checkpoint runs code when it is loaded, and a damaged shard is passed over.

Real checkpoints: a 2-process FSDP2 run and a 2-process DeepSpeed ZeRO-2 run on gloo write them;
a payload (a pickled ``os.system`` call that creates a marker file) is then planted in each file
they contain, one copy per file. Resume (on 2 real processes) and merge-weights must refuse every
copy with ``UnsafeCheckpointError`` naming the file and the global, and the marker never appears.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.distributed import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _fsdp():
    from tests.strategies.test_fsdp import Block
    from trainer.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy={Block})


def _deepspeed():
    from trainer.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(zero_stage=2)


def _module(kind):
    if kind == "fsdp":
        from tests.strategies.test_fsdp import Net, _data
    else:
        from tests.strategies.test_deepspeed import Net, _data
    return Net(), _data()


def _sharded_trainer(kind, dirpath, epochs):
    from trainer.callbacks import ModelCheckpoint
    from tests.helpers.trainers import quiet_trainer

    return quiet_trainer(max_epochs=epochs, strategy=_fsdp() if kind == "fsdp" else _deepspeed(),
                         num_sanity_val_steps=0, callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True)])


def _save_worker(kind, dirpath):
    model, (x, y) = _module(kind)
    _sharded_trainer(kind, dirpath, 1).fit(model, DataLoader(TensorDataset(x, y), batch_size=2))


def _resume_worker(kind, dirpaths):
    from trainer.strategies.checkpoint_io import CheckpointError

    outcome = {}
    for dirpath in dirpaths:
        model, (x, y) = _module(kind)
        trainer = _sharded_trainer(kind, dirpath, 2)
        try:
            trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=2), ckpt_path="last")
            outcome[dirpath] = ("resumed", trainer.global_step)
        except CheckpointError as err:
            outcome[dirpath] = (type(err).__name__, str(err))
    return outcome


def _plant_pickle(path, marker):
    """DCP's .metadata (a plain pickle): the payload rides in its planner_data."""
    with open(path, "rb") as f:
        metadata = pickle.load(f)  # the test's own, trusted file
    metadata.planner_data = {"payload": _Evil(marker), **(metadata.planner_data or {})}
    with open(path, "wb") as f:
        pickle.dump(metadata, f)


def _plant_torch(path, marker):
    """A torch.save file (meta.ckpt, DeepSpeed's .pt files): the payload beside the real content."""
    content = torch.load(path, weights_only=False)  # the test's own, trusted file
    content["payload"] = _Evil(marker)
    torch.save(content, path)


def _plant_distcp(path, marker):
    """A .distcp file: its first item is replaced by a torch.save of the payload, and .metadata's
    offsets are rewritten to match, as an attacker who can write the directory would."""
    directory, name = os.path.split(path)
    with open(os.path.join(directory, ".metadata"), "rb") as f:
        metadata = pickle.load(f)
    items = sorted(((k, v) for k, v in metadata.storage_data.items() if v.relative_path == name),
                   key=lambda kv: kv[1].offset)
    data = open(path, "rb").read()
    payload = io.BytesIO()
    torch.save({"payload": _Evil(marker)}, payload)
    chunks, offset = [], 0
    for i, (key, info) in enumerate(items):
        chunk = payload.getvalue() if i == 0 else data[info.offset: info.offset + info.length]
        info.offset, info.length = offset, len(chunk)
        offset += len(chunk)
        chunks.append(chunk)
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
    with open(os.path.join(directory, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)


def _planted_copies(tmp_path, last):
    """One copy of ``last`` per file it contains, with the payload planted in that file."""
    copies = {}
    for root, _, names in os.walk(last):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), last)
            if name.endswith(".py"):
                continue  # DeepSpeed's zero_to_fp32.py script: nothing of ours reads or runs it
            dirpath = tmp_path / "planted" / relative.replace("/", "_")
            shutil.copytree(last, dirpath / "last.ckpt")
            target = str(dirpath / "last.ckpt" / relative)
            marker = str(tmp_path / f"pwned-{relative.replace('/', '_')}")
            if name == ".metadata":
                _plant_pickle(target, marker)
            elif name.endswith(".distcp"):
                _plant_distcp(target, marker)
            else:
                _plant_torch(target, marker)
            copies[relative] = str(dirpath)
    return copies


@pytest.mark.parametrize("kind", ["fsdp", "deepspeed"])
def test_a_payload_in_any_file_of_a_sharded_checkpoint_is_refused_and_never_runs(tmp_path, kind):
    from trainer.cli.merge_weights import full_weights
    from trainer.strategies.checkpoint_io import UnsafeCheckpointError

    if kind == "deepspeed":
        pytest.importorskip("deepspeed")
    run_distributed(_save_worker, timeout=300, kind=kind, dirpath=str(tmp_path / "run"))
    copies = _planted_copies(tmp_path, tmp_path / "run" / "last.ckpt")
    expected = {".metadata", "__0_0.distcp", "__1_0.distcp", "meta.ckpt"} if kind == "fsdp" else {
        "meta.ckpt", "engine/mp_rank_00_model_states.pt", "engine/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "engine/zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    assert set(copies) == expected
    outcome = run_distributed(_resume_worker, timeout=300, kind=kind, dirpaths=sorted(copies.values()))
    for relative, dirpath in copies.items():
        for rank in (0, 1):  # both ranks refuse, with the same reason
            name, message = outcome[rank][dirpath]
            assert name == "UnsafeCheckpointError", (relative, message)
            assert os.path.basename(relative) in message and "posix.system" in message, message
        with pytest.raises(UnsafeCheckpointError, match=r"the global posix\.system"):
            full_weights(os.path.join(dirpath, "last.ckpt"))
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "merge-weights",
                             os.path.join(copies["meta.ckpt"], "last.ckpt"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=200)
    assert result.returncode == 2 and "Refusing to load" in result.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith("pwned")]  # no payload ever ran


def _fallback_worker(dirpaths):
    import warnings

    from trainer.callbacks import Callback

    outcome = {}
    for dirpath in dirpaths:
        model, (x, y) = _module("fsdp")
        trainer = _sharded_trainer("fsdp", dirpath, 3)
        started = []

        class Start(Callback):
            def on_train_start(self, trainer, module):
                started.append(trainer.global_step)

        trainer.callbacks.append(Start())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=2), ckpt_path="last")
        outcome[dirpath] = (started[0], [str(w.message) for w in caught if "skipping a damaged" in str(w.message)])
    return outcome


def _flip_a_data_byte(path):
    """Change one byte of a tensor's data in a .distcp file: the file keeps its size and every
    pickle in it still reads, only its CRC-32 tells."""
    import zipfile

    data = bytearray(open(path, "rb").read())
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))  # the last item; its data/0 holds tensor bytes
    info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    header = info.header_offset  # zipfile counts it from the start of the file (items before it included)
    name_len = int.from_bytes(data[header + 26: header + 28], "little")
    extra_len = int.from_bytes(data[header + 28: header + 30], "little")
    at = header + 30 + name_len + extra_len  # the first byte of the tensor's data
    data[at] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_damaged_shard_is_passed_over_for_the_newest_whole_checkpoint_on_every_rank(tmp_path):
    run = tmp_path / "run"
    run_distributed(_save_epochs_worker, timeout=300, dirpath=str(run))
    names = sorted(os.listdir(run))
    assert names == ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "last.ckpt"]
    truncated, flipped = tmp_path / "truncated", tmp_path / "flipped"
    shutil.copytree(run, truncated)
    shutil.copytree(run, flipped)
    shard = truncated / "last.ckpt" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    meta = torch.load(run / "last.ckpt" / "meta.ckpt", weights_only=True)
    checked_by_rank_1 = sorted(meta["files"])[1::2]
    assert checked_by_rank_1 == ["__0_0.distcp"]  # rank 0 never reads this file's CRC: rank 1 must tell it
    _flip_a_data_byte(flipped / "last.ckpt" / "__0_0.distcp")
    outcome = run_distributed(_fallback_worker, timeout=300, dirpaths=[str(truncated), str(flipped)])
    for rank in (0, 1):
        started, skipped = outcome[rank][str(truncated)]
        assert started == 16 and len(skipped) == 1 and "__1_0.distcp" in skipped[0] and "bytes" in skipped[0]
        started, skipped = outcome[rank][str(flipped)]
        assert started == 16 and len(skipped) == 1 and "CRC-32" in skipped[0]


def _save_epochs_worker(dirpath):
    from trainer import Trainer
    from trainer.callbacks import ModelCheckpoint

    model, (x, y) = _module("fsdp")
    Trainer(max_epochs=2, strategy=_fsdp(), logger=False, enable_progress_bar=False, accelerator="cpu",
            callbacks=[ModelCheckpoint(dirpath=dirpath, save_top_k=-1, save_last=True)]
            ).fit(model, DataLoader(TensorDataset(x, y), batch_size=2))
