"""A strategy with a checkpoint format of its own plugs in by defining only its format object: the
Trainer saves through it (synchronously and in the background), resumes through it after the
verifier ran its checks, and ``trainer merge-weights`` merges through it, found by the name the
checkpoint records. Nothing outside the strategy names the format or asks a flag."""

from __future__ import annotations

import argparse
import functools
import os
import pickle
from typing import Any

import pytest
import torch

from tests.helpers.models import BoringModel, regression_loader
from trainer.callbacks import ModelCheckpoint
from trainer.strategies import SingleDeviceStrategy
from trainer.strategies.checkpoint_errors import UnsafeCheckpointError
from trainer.strategies.checkpoint_format import ShardedFormat
from trainer.strategies.checkpoint_io import SHARDED_META, safe_load

CALLS: list[str] = []  # which of the toy format's operations ran, in order


class HalvesFormat(ShardedFormat):
    """A toy sharded format: the weights split over two files by key order, the optimizer states in a third."""

    name = "toy-halves"

    @staticmethod
    def _files(state: dict[str, Any], optim: Any) -> dict[str, Any]:
        keys = sorted(state)
        files = {"even.pt": {k: state[k] for k in keys[0::2]}, "odd.pt": {k: state[k] for k in keys[1::2]}}
        if optim is not None:
            files["optim.pt"] = optim
        return files

    def _state(self, checkpoint: dict[str, Any], module: torch.nn.Module, optimizers: list[Any]) -> dict[str, Any]:
        optim = [o.state_dict() for o in optimizers] if "optimizer_states" in checkpoint else None
        return self._files(module.state_dict(), optim)

    def save_files(self, directory: str, checkpoint: dict[str, Any], module: torch.nn.Module,
                   optimizers: list[Any]) -> None:
        CALLS.append("save_files")
        for name, part in self._state(checkpoint, module, optimizers).items():
            torch.save(part, os.path.join(directory, name))

    def stage(self, checkpoint: dict[str, Any], module: torch.nn.Module, optimizers: list[Any]):
        from trainer.strategies.checkpoint_directories import atomic_directory
        from trainer.strategies.checkpoint_io import snapshot

        CALLS.append("stage")
        parts, meta = snapshot(self._state(checkpoint, module, optimizers)), self.meta(checkpoint)

        def write(path: str) -> None:
            CALLS.append("staged write")
            atomic_directory(path, meta, lambda tmp: [torch.save(p, os.path.join(tmp, n)) for n, p in parts.items()])

        return write

    def require_staging(self, owner: str, fix: str) -> None:
        return None

    def load_files(self, path: str, module: torch.nn.Module, optimizers: list[Any]) -> None:
        CALLS.append("load_files")
        module.load_state_dict(self.merge(path, {}))
        for optimizer, state in zip(optimizers, torch.load(os.path.join(path, "optim.pt"), weights_only=True)):
            optimizer.load_state_dict(state)

    @classmethod
    def verify_files(cls, path: str) -> None:
        CALLS.append("verify_files")
        for name in sorted(os.listdir(path)):
            if name.endswith(".pt"):
                try:
                    torch.load(os.path.join(path, name), weights_only=True)
                except pickle.UnpicklingError:
                    raise UnsafeCheckpointError(f"Refusing to load {os.path.join(path, name)!r}: it would run code.") \
                        from None

    @classmethod
    def merge(cls, path: str, header: dict[str, Any]) -> dict[str, Any]:
        CALLS.append("merge")
        return {**torch.load(os.path.join(path, "even.pt"), weights_only=True),
                **torch.load(os.path.join(path, "odd.pt"), weights_only=True)}


class HalvesStrategy(SingleDeviceStrategy):
    """A new strategy: one device, and the toy format. This is all it defines."""

    @functools.cached_property
    def checkpoint_format(self) -> HalvesFormat:
        return HalvesFormat(self)


def _fit(tmp_path, make_trainer, max_steps: int, ckpt_path: str | None = None, async_save: bool = False):
    model = BoringModel()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), every_n_train_steps=2, save_top_k=1, save_last=True,
                           async_save=async_save)
    trainer = make_trainer(strategy=HalvesStrategy(), default_root_dir=str(tmp_path), max_steps=max_steps,
                           callbacks=[ckpt], num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(), ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("async_save", [False, True])
def test_a_new_format_saves_resumes_and_merges_through_its_object_alone(tmp_path, make_trainer, async_save):
    from trainer.cli.merge_weights import run as merge_weights

    CALLS.clear()
    _, reference = _fit(tmp_path / "whole", make_trainer, max_steps=6)  # uninterrupted
    CALLS.clear()
    trainer, model = _fit(tmp_path, make_trainer, max_steps=4, async_save=async_save)
    last = trainer.checkpoint_callback.last_model_path
    assert os.path.isdir(last) and sorted(os.listdir(last)) == ["even.pt", SHARDED_META, "odd.pt", "optim.pt"]
    meta = safe_load(last)
    assert meta["sharded"] == "toy-halves" and meta["optimizer_states"] == "sharded" and "state_dict" not in meta
    assert ("stage" in CALLS and "staged write" in CALLS) if async_save else ("save_files" in CALLS)

    # merge-weights finds the format by the name the checkpoint records, and merges through it
    CALLS.clear()
    out = tmp_path / "merged"
    assert merge_weights(argparse.Namespace(checkpoint=last, output=str(out), max_shard_size="10GB")) == 0
    assert CALLS == ["verify_files", "merge"]
    from safetensors.torch import load_file

    merged = load_file(str(out / "model.safetensors"))
    assert merged.keys() == model.state_dict().keys()
    assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())

    # a resume reads it back through the format, after its checks, and ends where an uninterrupted run ends
    CALLS.clear()
    _, resumed = _fit(tmp_path, make_trainer, max_steps=6, ckpt_path="last")
    assert CALLS[:2] == ["verify_files", "load_files"]
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_a_new_format_s_own_check_refuses_a_payload_before_anything_is_read(tmp_path, make_trainer):
    trainer, _ = _fit(tmp_path, make_trainer, max_steps=2)
    last = trainer.checkpoint_callback.last_model_path
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    torch.save({"x": Payload()}, os.path.join(last, "odd.pt"))
    CALLS.clear()
    with pytest.raises(UnsafeCheckpointError, match=r"odd\.pt.*would run code"):
        _fit(tmp_path, make_trainer, max_steps=4, ckpt_path=last)
    assert not ran.exists() and "load_files" not in CALLS


def _deepspeed_state_worker(directory: str) -> dict[str, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    from trainer import Accelerator, DeepSpeedPlugin

    accelerator = Accelerator(cpu=True, deepspeed_plugin=DeepSpeedPlugin(zero_stage=2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), torch.randn(16, 1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(TensorDataset(x, y), batch_size=2))

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
        optimizer.step()
        optimizer.zero_grad()

    batches = list(loader)
    for xb, yb in batches[:2]:
        step(xb, yb)
    saved = {k: v.tolist() for k, v in accelerator.get_state_dict(model).items()}
    accelerator.save_state(directory)  # the engine's own files, through the strategy's format
    step(*batches[2])
    moved = {k: v.tolist() for k, v in accelerator.get_state_dict(model).items()}
    accelerator.load_state(directory)
    back = {k: v.tolist() for k, v in accelerator.get_state_dict(model).items()}
    return {"saved": saved, "moved": moved, "back": back}


@pytest.mark.slow
def test_deepspeeds_format_saves_loads_and_merges_an_accelerator_state(tmp_path):
    """The DeepSpeed engine's files through the Accelerator door: save_state, load_state and merge-weights
    all go through DeepSpeedFormat (found again by the name meta.ckpt records)."""
    pytest.importorskip("deepspeed")
    from tests.helpers.distributed import run_distributed
    from trainer.persistence.weights import full_weights

    directory = str(tmp_path / "state")
    ranks = run_distributed(_deepspeed_state_worker, timeout=300, directory=directory)
    saved, moved, back = ranks[0]["saved"], ranks[0]["moved"], ranks[0]["back"]
    assert moved != saved and back == saved
    meta = safe_load(directory)
    assert meta["sharded"] == "deepspeed" and meta["optimizer_states"] == "sharded"
    merged = full_weights(directory)
    assert merged.keys() == saved.keys()
    assert all(torch.allclose(merged[k], torch.tensor(v), atol=1e-6) for k, v in saved.items())  # fp32 masters
