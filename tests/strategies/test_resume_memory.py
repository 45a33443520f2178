"""Resuming does not hold the checkpoint file and the live state at once: the file is memory-mapped,
copied into the live tensors in chunks, and the pages read are dropped; the result is the same."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from trainer.strategies.checkpoint_io import safe_load
from trainer.strategies.mapped import MappedCheckpoint

WIDTH = 2048  # 8 Linear(2048, 2048): 134 MB of weights, as much again of momentum


class Wide(TrainModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(8)))

    def training_step(self, batch, batch_idx):
        return self.body(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)


def _fit(steps: int, ckpt_path: str | None = None) -> tuple[Wide, Trainer]:
    model = Wide()
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, WIDTH)), batch_size=2), ckpt_path=ckpt_path)
    return model, trainer


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets this process's peak RSS (VmHWM) to its current RSS
        return True
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_resume_peak_memory_is_the_live_state_not_twice_it(tmp_path):
    if not _can_reset_peak():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    path = str(tmp_path / "wide.ckpt")
    model, trainer = _fit(2)
    trainer.save_checkpoint(path)
    expected = [p.detach().clone() for p in model.parameters()]
    momentum = [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model, trainer

    fresh = Wide()
    resumed = Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    _can_reset_peak()
    before = _status("VmRSS")
    resumed.fit(fresh, DataLoader(TensorDataset(torch.randn(8, WIDTH)), batch_size=2), ckpt_path=path)
    grew = _status("VmHWM") - before
    # The resume adds the momentum buffers (as much as the weights) and at most one 64 MB chunk of
    # the file at a time. Reading the file whole would add the whole file (2x the weights) on top.
    assert grew <= weights + 0.1 * 2 * weights, (grew / 2**20, weights / 2**20)
    assert resumed.global_step == 2
    for got, want in zip(fresh.parameters(), expected):
        assert torch.equal(got, want)
    state = resumed.optimizer.state
    for p, want in zip(fresh.parameters(), momentum):
        assert torch.equal(state[p]["momentum_buffer"], want)


def test_a_mapped_checkpoint_reads_the_same_values_and_can_be_read_again_after_release(tmp_path):
    path = str(tmp_path / "small.ckpt")
    data = {"state_dict": {"w": torch.arange(300_000, dtype=torch.float32)}, "step": 3}
    torch.save(data, path)
    mapped = safe_load(path, mmap=True)
    assert isinstance(mapped, MappedCheckpoint) and mapped["step"] == 3
    w = mapped["state_dict"]["w"]
    assert mapped.pages.ranges and any(a <= w.data_ptr() < b for a, b in mapped.pages.ranges)
    copy = w.clone()
    mapped.pages.release([w])  # dropped pages come back from the file when read again
    assert torch.equal(w, copy) and torch.equal(copy, data["state_dict"]["w"])


def test_release_never_touches_memory_outside_the_file_mapping(tmp_path):
    path = str(tmp_path / "small.ckpt")
    torch.save({"w": torch.ones(100_000)}, path)
    mapped = safe_load(path, mmap=True)
    own = torch.full((1_000_000,), 7.0)  # anonymous memory: dropping its pages would zero it
    mapped.pages.release([own])
    assert bool((own == 7.0).all())
