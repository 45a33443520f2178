"""A 2-process Trainer run in which one rank hangs or dies, for test_rank_failures.py:

    trainer launch --num-processes 2 --collective-timeout 6 faulty_rank_script.py FAULT RANK MARK_FILE

At batch 2, rank RANK writes the time to MARK_FILE and then hangs (``hang``: sleeps forever in
``training_step``) or dies (``kill``: SIGKILLs itself). The other rank waits in DDP's gradient
all-reduce until the collective timeout (hang) or the closed connection (kill) ends it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trainer import Trainer, TrainModule  # noqa: E402


class Faulty(TrainModule):
    def __init__(self, fault: str, rank: int, mark: str) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.fault, self.rank, self.mark = fault, rank, mark

    def training_step(self, batch, batch_idx):
        if batch_idx == 2 and self.global_rank == self.rank:
            with open(self.mark, "w") as f:
                f.write(repr(time.time()))
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)  # hung: never returns
        x, y = batch
        return ((self.layer(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    fault, rank, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    trainer = Trainer(max_epochs=1, strategy="ddp", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(Faulty(fault, rank, mark), DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)),
                                                      batch_size=2))
