"""A finished multi-process run exits cleanly: once the process group is destroyed (at exit, by
the handler ProcessGroup.setup registers; or by Accelerator.end_training), none of gloo's threads
is left running into interpreter shutdown.

They were, whenever a DistributedDataParallel had been built: torch._dynamo, imported by DDP's
constructor after the group existed, kept a reference to the group, so destroy_process_group left its
two ``pt_gloo_runloop`` threads and its ``gloo_tcp_loop`` thread alive. A thread that dropped a
finished collective's tensors during shutdown took the GIL of a finalizing interpreter, and the rank
died with "terminate called without an active exception" (SIGABRT) after "done" -- `trainer launch`
exited 1 for a finished run (issue 23). Real gloo groups, 2 processes; the threads are read from
/proc/self/task."""

from __future__ import annotations

import os
import sys

import pytest

from tests.helpers.distributed import run_distributed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")]


def _threads() -> list[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(names)


def _accelerator_run() -> dict:
    import torch

    from trainer import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(4):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.randn(3, 4)).pow(2).mean())
            optimizer.step()
            optimizer.zero_grad()
    accelerator.gather_for_metrics(torch.ones(2))
    during = _threads()
    accelerator.end_training()  # destroys the group
    return {"during": during, "after": _threads()}


def _trainer_run() -> dict:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from trainer import Trainer, TrainModule
    from trainer.strategies.process_group import destroy_process_group

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = Trainer(max_epochs=1, strategy="ddp", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)), batch_size=2))
    during = _threads()
    destroy_process_group()  # what the exit handler runs
    return {"during": during, "after": _threads()}


@pytest.mark.parametrize("run", [_accelerator_run, _trainer_run], ids=["accelerator", "trainer"])
def test_no_gloo_thread_outlives_the_destroyed_group(run):
    # fresh interpreters: the fork server's ranks have imported torch._dynamo already (tests/helpers/distributed.py),
    # so they could not fail without the import the process group makes before it forms
    for rank, threads in enumerate(run_distributed(run, world_size=2, timeout=150, fresh_interpreters=True)):
        assert any("gloo" in name for name in threads["during"]), threads  # the probe sees them
        assert not [name for name in threads["after"] if "gloo" in name], (rank, threads)
