"""The Accelerator door's restart pattern (README "When things go wrong"), for test_accelerator_restarts.py:

    trainer launch --num-processes 2 --max-restarts 1 accelerator_restart_script.py RUN_DIR OUT_FILE [KILL_AT_STEP]

Every attempt runs the same code: ``load_state`` when the state directory exists, the epoch's order
from a seedable sampler (``set_epoch``), ``skip_first_batches`` past the batches already trained,
``save_state`` after every optimizer step. With KILL_AT_STEP, rank 1 SIGKILLs itself right after that
step's save on the first attempt only, and torchrun restarts the group. Rank 0 writes the final
weights to OUT_FILE.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainer import Accelerator, DataLoaderConfiguration  # noqa: E402
from trainer.utils import set_seed  # noqa: E402

EPOCHS = 2


class Progress:
    """Where the loop is: registered for checkpointing, so save_state/load_state carry it."""

    def __init__(self) -> None:
        self.epoch, self.batch, self.steps = 0, 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self.steps = state["epoch"], state["batch"], state["steps"]


class Stop(Exception):
    """Raised (in-process tests) where the launcher test SIGKILLs."""


def train(run_dir: str, kill_at: int | None = None, in_process: bool = False, epochs: int = EPOCHS,
          set_epoch: bool = True) -> dict:
    """The loop; ``set_epoch=False`` leaves the epochs to the prepared loader (its passes count them)."""
    set_seed(0)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(44, 8, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=3, shuffle=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    state_dir = os.path.join(run_dir, "state")
    if os.path.isdir(state_dir):  # the same code for the first attempt and every restart
        accelerator.load_state(state_dir)
    for epoch in range(progress.epoch, epochs):
        if set_epoch:
            loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, progress.batch) if progress.batch else loader
        for xb, yb in batches:
            with accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.batch += 1
            if accelerator.sync_gradients:  # save between windows, never inside one
                progress.steps += 1
                accelerator.save_state(state_dir)
                if progress.steps == kill_at and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
                    if in_process:
                        raise Stop()
                    if accelerator.process_index == 1:
                        os.kill(os.getpid(), signal.SIGKILL)
        progress.epoch, progress.batch = epoch + 1, 0
    weights = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return {"weights": weights, "steps": progress.steps}


def main(run_dir: str, out_file: str, kill_at: int | None) -> None:
    result = train(run_dir, kill_at)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(result["weights"], out_file)
        print(f"done at step {result['steps']} attempt {os.environ.get('TORCHELASTIC_RESTART_COUNT')}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
