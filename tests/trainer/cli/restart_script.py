"""A 2-process run for tests/trainer/cli/test_restarts.py, started by `trainer launch --max-restarts N`:

    trainer launch --num-processes 2 --max-restarts 1 restart_script.py RUN_DIR OUT_FILE [KILL_AT_STEP]

fit(ckpt_path="last") on every attempt; with KILL_AT_STEP, rank 1 SIGKILLs itself at that optimizer
step on the first attempt only (TORCHELASTIC_RESTART_COUNT=0), and torchrun restarts the group.
Rank 0 writes the final weights to OUT_FILE.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainer.callbacks import Callback, ModelCheckpoint  # noqa: E402
from trainer import Trainer, TrainModule, seed_everything  # noqa: E402


class Net(TrainModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class Announce(Callback):
    """Prints this worker's pid once it has trained a batch (the tests wait for it); with
    RESTART_SCRIPT_STEP_SLEEP, each batch takes that long (time for a signal to land)."""

    def __init__(self) -> None:
        self.announced = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if not self.announced:
            self.announced = True
            print(f"training pid {os.getpid()}", flush=True)
        time.sleep(float(os.environ.get("RESTART_SCRIPT_STEP_SLEEP", "0")))


class KillOnce(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (trainer.global_step == self.step and trainer.global_rank == 1
                and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"):
            os.kill(os.getpid(), signal.SIGKILL)


def main(run_dir: str, out_file: str, kill_at: int | None) -> None:
    seed_everything(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)
    callbacks = [ModelCheckpoint(every_n_train_steps=1, save_top_k=0, save_last=True), Announce()]
    if kill_at is not None:
        callbacks.append(KillOnce(kill_at))
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=run_dir,
                      callbacks=callbacks)
    model = Net()
    trainer.fit(model, loader, ckpt_path="last")
    if trainer.is_global_zero:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out_file)
        print(f"done at global_step {trainer.global_step} attempt {os.environ.get('TORCHELASTIC_RESTART_COUNT')}",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
