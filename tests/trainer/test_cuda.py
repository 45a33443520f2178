"""The GPU tier: what the CPU tests cannot prove. Every test is marked ``cuda`` and skipped without
a CUDA device (``cuda(devices=2)``: without two). Run them with ``make test-gpu``.

- bf16-mixed and 16-mixed on CUDA: autocast on the CUDA device type, fp32 master weights, an update
  close to fp32's; 16-mixed's CUDA gradient scaler skips an overflowing step.
- A step does not synchronise the host: pinned-memory loaders, ``non_blocking`` copies, and
  ``torch.cuda.set_sync_debug_mode("error")`` around the steady-state steps.
- Resume restores the CUDA RNG (dropout on the GPU): same weights as an uninterrupted run.
- DeviceStatsMonitor reports the device's allocated / reserved / peak memory.
- On 2 GPUs: DDP over NCCL, FSDP2 and DeepSpeed ZeRO-3 each equal one process on the global batch.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from trainer.callbacks import Callback, DeviceStatsMonitor
from tests.helpers.distributed import run_distributed
from tests.helpers.trainers import LEAN, quiet_trainer

pytestmark = [pytest.mark.cuda, pytest.mark.timeout(300)]


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.linear(x))


class Net(TrainModule):
    """Two blocks and a head; records the dtype of a forward and whether CUDA autocast was on."""

    def __init__(self, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.Sequential(Block(width), torch.nn.Dropout(dropout), Block(width))
        self.head = torch.nn.Linear(width, 1)
        self.seen: tuple = ()

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.head(self.blocks(x))
        self.seen = (x.device.type, out.dtype, self.head.weight.dtype, torch.is_autocast_enabled("cuda"))
        return torch.nn.functional.mse_loss(out.float(), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _data(n: int = 64, width: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, width, generator=g), torch.randn(n, 1, generator=g))


def _fit(batch: int = 8, **kw) -> tuple[Net, Trainer]:
    model = Net()
    trainer = quiet_trainer(max_epochs=2, accelerator="cuda", **LEAN, **kw)
    trainer.fit(model, DataLoader(_data(), batch_size=batch))
    return model, trainer


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().float().cpu() for name, value in model.state_dict().items()}


# -- precision on CUDA -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, low", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_autocasts_on_cuda_and_lands_close_to_fp32(precision, low):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    reference, _ = _fit(precision="32-true")
    model, trainer = _fit(precision=precision)
    assert model.seen == ("cuda", low, torch.float32, True)  # low-precision matmuls, fp32 master weights
    if precision == "16-mixed":
        scaler = trainer.strategy.precision.scaler
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    for name, value in _weights(reference).items():
        torch.testing.assert_close(_weights(model)[name], value, atol=3e-2, rtol=0, msg=name)


class Overflow(TrainModule):
    """A finite loss whose scaled gradient overflows fp32 on batch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.w * x).sum() * (1e35 if batch_idx == 1 else 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_16_mixed_on_cuda_skips_the_overflowing_step(make_trainer):
    model = Overflow()
    trainer = make_trainer(precision="16-mixed", max_epochs=1, accelerator="cuda", **LEAN)
    trainer.fit(model, DataLoader(TensorDataset(torch.ones(3, 2)), batch_size=1))
    assert model.w.device.type == "cuda"
    torch.testing.assert_close(model.w.detach().cpu(), torch.full((2,), 1 - 2 * 0.01))  # batches 0 and 2 stepped
    assert trainer.strategy.precision.scaler.get_scale() < 2.0**16


# -- no host sync in a step ------------------------------------------------------------------------
class SyncGuard(Callback):
    """Turns CUDA's sync debug mode to "error" from the end of batch ``first`` to the end of batch
    ``last``: the batches in between are fetched, copied, forwarded, backpropagated and stepped under
    it. Warm-up (CUDA context, cuBLAS handles) and the log read-back at the end stay outside."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last, self.guarded = first, last, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.first < batch_idx <= self.last:
            assert batch[0].device.type == "cuda"
            self.guarded += 1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.first:
            torch.cuda.set_sync_debug_mode("error")
        elif batch_idx == self.last:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_step_does_not_synchronise_the_host(precision, make_trainer):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    guard = SyncGuard(first=1, last=6)
    trainer = make_trainer(precision=precision, max_epochs=1, log_every_n_steps=50, gradient_clip_val=1.0,
                           callbacks=[guard], accelerator="cuda", **LEAN)
    loader = DataLoader(_data(), batch_size=8, pin_memory=True)
    try:
        trainer.fit(Net(), loader)  # any synchronising call in batches 2..6 raises here
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.guarded == 5 and trainer.global_step == 8


def test_the_sync_guard_catches_a_host_sync(make_trainer):
    """The guard above can fail: a step that reads its loss back is caught."""

    class Reads(Net):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            loss.item()
            return loss

    trainer = make_trainer(max_epochs=1, callbacks=[SyncGuard(first=1, last=6)], accelerator="cuda", **LEAN)
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            trainer.fit(Reads(), DataLoader(_data(), batch_size=8, pin_memory=True))
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- resume restores the CUDA RNG --------------------------------------------------------------------
class Crash(Exception):
    pass


class CrashAfterStep(Callback):
    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Crash()


def test_resume_continues_the_cuda_random_stream(tmp_path, make_trainer):
    from trainer import seed_everything

    def run(callbacks=(), ckpt_path=None):
        model = Net(dropout=0.5)  # the dropout masks come from the CUDA generator
        trainer = make_trainer(max_epochs=2, callbacks=list(callbacks), accelerator="cuda", **LEAN)
        trainer.fit(model, DataLoader(_data(), batch_size=8, shuffle=True), ckpt_path=ckpt_path)
        return _weights(model)

    seed_everything(0)
    expected = run()
    seed_everything(0)
    path = str(tmp_path / "crash.ckpt")
    with pytest.raises(Crash):
        run([CrashAfterStep(5, path)])
    seed_everything(123)
    torch.cuda.manual_seed_all(123)  # the CUDA stream must come from the checkpoint, not from here
    got = run(ckpt_path=path)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, msg=name)


# -- DeviceStatsMonitor ------------------------------------------------------------------------------
class Holds(Net):
    """Keeps a 64 MB buffer on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ballast", torch.zeros(16 * 1024 * 1024))


def test_device_stats_monitor_reports_cuda_memory(make_trainer):
    monitor = DeviceStatsMonitor()
    trainer = make_trainer(max_epochs=1, log_every_n_steps=2, callbacks=[monitor], accelerator="cuda", **LEAN)
    trainer.fit(Holds(), DataLoader(_data(), batch_size=8))
    stats = monitor.last
    assert stats["_step"] == 8
    assert stats["device_stats/cuda_allocated_mb"] >= 64
    assert stats["device_stats/cuda_reserved_mb"] >= stats["device_stats/cuda_allocated_mb"]
    assert stats["device_stats/cuda_peak_allocated_mb"] >= stats["device_stats/cuda_allocated_mb"]


# -- two GPUs ----------------------------------------------------------------------------------------
def _strategy(name: str):
    from trainer.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    if name == "ddp":
        strategy = DDPStrategy(device_kind="cuda")
        assert strategy.backend == "nccl"
        return strategy
    if name == "fsdp":
        return FSDPStrategy(device_kind="cuda", auto_wrap_policy={Block})
    return DeepSpeedStrategy(zero_stage=3, device_kind="cuda")


def _two_gpu_worker(name: str, k: int) -> dict:
    strategy = _strategy(name)
    model = Net()
    trainer = quiet_trainer(strategy=strategy, accumulate_grad_batches=k, max_epochs=2, accelerator="cuda", **LEAN)
    trainer.fit(model, DataLoader(_data(), batch_size=4))  # 4 per rank: the global batch is 8
    assert model.seen[0] == "cuda" and strategy.root_device.index == trainer.local_rank
    full = model.state_dict() if name == "ddp" else strategy.full_state_dict(model)  # FSDP, ZeRO: {} off rank 0
    return {"steps": trainer.global_step, "weights": {n: v.float().cpu().tolist() for n, v in full.items()}}


@pytest.mark.slow
@pytest.mark.cuda(devices=2)
@pytest.mark.parametrize("name, k", [("ddp", 1), ("ddp", 2), ("fsdp", 2), ("deepspeed", 2)])
def test_two_gpus_equal_one_gpu_on_the_global_batch(name, k):
    if name == "deepspeed":
        pytest.importorskip("deepspeed")
    ranks = run_distributed(_two_gpu_worker, timeout=240, name=name, k=k)
    reference, trainer = _fit(batch=8, accumulate_grad_batches=k)
    assert ranks[0]["steps"] == ranks[1]["steps"] == trainer.global_step
    # the full weights: on every rank under DDP, gathered on rank zero under FSDP and ZeRO-3
    for rank in ranks if name == "ddp" else ranks[:1]:
        for key, value in _weights(reference).items():
            torch.testing.assert_close(torch.tensor(rank["weights"][key]), value, atol=1e-5, rtol=1e-4, msg=key)
