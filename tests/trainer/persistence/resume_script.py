"""A training run used by tests/trainer/persistence/test_crash_safety.py: run it, kill it, run it again.

    python resume_script.py RUN_DIR OUT_FILE

It always calls fit(ckpt_path="last"): the first run starts fresh, every restart resumes.
At the end it writes the final weights to OUT_FILE.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainer.callbacks import Callback, ModelCheckpoint  # noqa: E402
from trainer import Trainer, TrainModule, seed_everything  # noqa: E402


class Net(TrainModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(0.2), torch.nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 7, 0.8),
                                                   "interval": "step"}}


class Announce(Callback):
    """Prints a line once this process has trained a batch (the tests wait for it)."""

    announced = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if not self.announced:
            self.announced = True
            print("training", flush=True)


def main(run_dir: str, out_file: str) -> None:
    seed_everything(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, shuffle=True)
    trainer = Trainer(max_epochs=5, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                      enable_progress_bar=False, default_root_dir=run_dir,
                      callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=0, save_last=True), Announce()])
    model = Net()
    trainer.fit(model, loader, ckpt_path="last")
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out_file)
    print(f"done at global_step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
