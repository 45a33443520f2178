"""A run for tests/trainer/cli/test_elastic.py, started by agents of `trainer launch --nnodes 1:2`:

    trainer launch --nnodes 1:2 --nproc-per-node 1 --max-restarts 3 ... elastic_script.py RUN_DIR OUT_FILE

fit(ckpt_path="last") on every (re-)start, a checkpoint after every optimizer step. The module keeps,
in its checkpoint, which samples every step trained (gathered from all ranks) and on how many
processes; rank 0 prints "step S epoch E world W" after each step and writes that record to OUT_FILE
at the end. ELASTIC_STEP_SLEEP seconds per step give the test time to remove and add an agent; once
the run has shrunk to one process and grown back to two, the steps run at full speed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainer import Trainer, TrainModule, seed_everything  # noqa: E402
from trainer.callbacks import Callback, ModelCheckpoint  # noqa: E402

N, BATCH, WIDTH = 40, 2, 4  # WIDTH: a rank's batch, padded with -1, for the gather (re-dealt batches vary)


class Net(TrainModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)
        self.trained: list[list] = []  # [epoch, world size, sample ids] per optimizer step

    def training_step(self, batch, batch_idx):
        x, y, ids = batch
        padded = torch.full((WIDTH,), -1, dtype=torch.int64)
        padded[:len(ids)] = ids
        everyone = self.all_gather(padded).flatten().tolist()  # a test's record: a host sync is fine here
        self.trained.append([self.current_epoch, self.trainer.world_size, [i for i in everyone if i >= 0]])
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["trained"] = self.trained

    def on_load_checkpoint(self, checkpoint):
        self.trained = checkpoint["trained"]


class Report(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            print(f"step {trainer.global_step} epoch {trainer.current_epoch} world {trainer.world_size} "
                  f"at {time.time():.3f}", flush=True)
        worlds = [world for _, world, _ in module.trained]
        if not (1 in worlds and worlds[-1] == 2):  # once grown back, the test has nothing left to time
            time.sleep(float(os.environ.get("ELASTIC_STEP_SLEEP", "0")))


def main(run_dir: str, out_file: str) -> None:
    seed_everything(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True), torch.arange(N))
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=run_dir,
                      callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=0, save_last=True), Report()])
    model = Net()
    trainer.fit(model, DataLoader(data, batch_size=BATCH, shuffle=True), ckpt_path="last")
    if trainer.is_global_zero:
        Path(out_file).write_text(json.dumps(model.trained))
        print(f"done at global_step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
