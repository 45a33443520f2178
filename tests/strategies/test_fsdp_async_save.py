"""ModelCheckpoint(async_save=True) with FSDP on a real 2-process gloo group: every rank copies its
shards aside and writes them on a background thread, with the guarantees of the synchronous save --
the same checkpoints, an atomic directory with meta.ckpt last, fit ending only once the last write
is whole, and a failed write raised in the training thread with the previous checkpoint intact."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer
from trainer.callbacks import Callback, ModelCheckpoint
from trainer.strategies import FSDPStrategy
from trainer.strategies.checkpoint_io import safe_load
from trainer.strategies.checkpoint_format import verify_checkpoint
from trainer.strategies.checkpoint_verify import safe_dcp_load
from tests.helpers.distributed import run_distributed
from tests.strategies.test_fsdp import Block, Net, _data

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _slow_background_dcp_save(fail_on: int | None = None) -> list[int]:
    """Make DCP's save slow when it runs on the checkpoint writer's thread (training goes on meanwhile,
    so a write that read the live tensors would differ), and raise on its ``fail_on``-th call there."""
    import torch.distributed.checkpoint as dcp

    inner, calls = dcp.save, []

    def save(*args, **kwargs):
        if threading.current_thread().name == "checkpoint-writer":
            calls.append(1)
            if len(calls) == fail_on:
                raise OSError(f"simulated write failure (save {fail_on})")
            time.sleep(0.3)
        return inner(*args, **kwargs)

    dcp.save = save
    return calls


class _StartStep(Callback):
    def on_train_start(self, trainer, module):
        self.step = trainer.global_step


def _fit(dirpath, async_save, epochs=2, ckpt_path=None, callbacks=()):
    x, y = _data()
    model = Net()
    trainer = Trainer(max_epochs=epochs, strategy=FSDPStrategy(auto_wrap_policy={Block}), logger=False,
                      enable_progress_bar=False, num_sanity_val_steps=0, accelerator="cpu",
                      callbacks=[ModelCheckpoint(dirpath=dirpath, filename="{step}", every_n_train_steps=3,
                                                 save_top_k=-1, save_last=True, async_save=async_save), *callbacks])
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=2), ckpt_path=ckpt_path)
    return model, trainer


def _async_equals_sync_worker(tmp):
    calls = _slow_background_dcp_save()
    _, sync = _fit(f"{tmp}/sync", async_save=False)
    model, trainer = _fit(f"{tmp}/async", async_save=True)
    at_return = sorted(os.listdir(f"{tmp}/async"))  # fit returned: every write must be whole by now
    whole = all(os.path.isfile(f"{tmp}/async/{n}/meta.ckpt") for n in at_return if n != ".lock")
    return {"at_return": at_return, "whole": whole, "background_saves": len(calls),
            "steps": (sync.global_step, trainer.global_step)}


def _comparable(meta, dirpath):
    """meta.ckpt without what differs between two runs in two directories (file CRCs, time, paths)."""
    meta = {k: v for k, v in meta.items() if k != "files"}
    meta["metadata"] = {k: v for k, v in meta["metadata"].items() if k != "saved_at"}
    return repr(meta).replace(str(dirpath), "<dir>")


def _whole_state(path):
    state = {}
    safe_dcp_load(state, str(path), whole=True)
    return dict(_flat(state))


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}{k}.")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}{i}.")
    else:
        yield prefix[:-1], tree


def test_async_sharded_saves_equal_the_synchronous_ones_and_fit_waits_for_the_last(tmp_path):
    ranks = run_distributed(_async_equals_sync_worker, tmp=str(tmp_path))
    names = ["last.ckpt", "step=12.ckpt", "step=15.ckpt", "step=3.ckpt", "step=6.ckpt", "step=9.ckpt"]
    for rank in ranks:
        assert rank["steps"] == (16, 16)
        assert rank["whole"] and [n for n in rank["at_return"] if n != ".lock"] == names
        assert rank["background_saves"] == 10  # 5 checkpoints and 5 last.ckpt, each written behind training
    for name in names:
        sync, asyn = tmp_path / "sync" / name, tmp_path / "async" / name
        a, b = _whole_state(sync), _whole_state(asyn)
        assert a.keys() == b.keys() and any(k.endswith("momentum_buffer") for k in a)
        for key in a:  # model and optimizer shards, bit for bit
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key
        meta_a, meta_b = safe_load(str(sync)), safe_load(str(asyn))
        verify_checkpoint(str(asyn), meta_b)  # sizes and CRCs recorded last, and they match the files
        assert _comparable(meta_a, sync.parent) == _comparable(meta_b, asyn.parent)
    assert not [n for n in os.listdir(tmp_path / "async") if n.startswith(".tmp-")]


def _failure_worker(tmp):
    _slow_background_dcp_save(fail_on=3)  # the second checkpoint (step 6): saves 1-2 are step 3 and its last.ckpt
    try:
        _fit(f"{tmp}/c", async_save=True)
    except RuntimeError as err:
        raised = str(err)
    else:
        raised = None
    names = sorted(n for n in os.listdir(f"{tmp}/c") if n != ".lock")
    last = safe_load(f"{tmp}/c/last.ckpt")
    verify_checkpoint(f"{tmp}/c/last.ckpt", last)  # whole: every shard as recorded
    start = _StartStep()
    _fit(f"{tmp}/c", async_save=False, epochs=1, ckpt_path="last", callbacks=[start])
    return {"raised": raised, "names": names, "last_step": last["global_step"], "resumed_at": start.step}


def test_a_failed_background_write_is_raised_in_training_and_leaves_the_previous_checkpoint_whole(tmp_path):
    ranks = run_distributed(_failure_worker, tmp=str(tmp_path))
    for rank in ranks:
        assert rank["raised"] is not None and "step=6.ckpt in the background failed: OSError: simulated write " \
            "failure" in rank["raised"]
        assert rank["names"] == ["last.ckpt", "step=3.ckpt"]  # no partial directory under a checkpoint's name
        assert rank["last_step"] == rank["resumed_at"] == 3  # fit(ckpt_path="last") resumes from it
