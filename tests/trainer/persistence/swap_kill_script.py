"""Saves in a sharded (FSDP, one process) run or with Accelerator.save_state, for
test_crash_safety: with TRAINER_TEST_KILL_IN_SWAP set, the process SIGKILLs itself between the two
renames of a directory swap (the old checkpoint moved aside, the new one not yet in place).

    python swap_kill_script.py trainer RUN_DIR EPOCHS     # fit(ckpt_path="last"), prints the steps
    python swap_kill_script.py trainer-async RUN_DIR EPOCHS   # the same, ModelCheckpoint(async_save=True)
    python swap_kill_script.py accelerator STATE_DIR N    # save_state N times, then load_state
"""

import os
import socket
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset


def trainer_run(run_dir: str, epochs: int, async_save: bool = False) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from tests.helpers import BoringModel
    from trainer import Trainer
    from trainer.callbacks import ModelCheckpoint
    from trainer.strategies import FSDPStrategy

    x, y = torch.randn(32, 4), torch.randn(32, 1)
    trainer = Trainer(max_epochs=epochs, strategy=FSDPStrategy(), accelerator="cpu", logger=False,
                      enable_progress_bar=False, default_root_dir=run_dir,
                      callbacks=[ModelCheckpoint(save_top_k=0, save_last=True, async_save=async_save)])
    trainer.fit(BoringModel(), DataLoader(TensorDataset(x, y), batch_size=4), ckpt_path="last")
    print(f"finished at global_step {trainer.global_step}", flush=True)


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def accelerator_run(state_dir: str, saves: int) -> None:
    from trainer import Accelerator

    accelerator = Accelerator(cpu=True)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    model = torch.nn.Linear(2, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    kill = os.environ.pop("TRAINER_TEST_KILL_IN_SWAP", None)
    for _ in range(saves):
        counter.n += 1
        if kill and counter.n == saves:  # the last save is killed in its swap
            os.environ["TRAINER_TEST_KILL_IN_SWAP"] = kill
        accelerator.save_state(state_dir)
    counter.n = 0
    accelerator.load_state(state_dir)
    print(f"loaded save {counter.n}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
    kind, where, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind.startswith("trainer"):
        trainer_run(where, count, async_save=kind == "trainer-async")
    else:
        accelerator_run(where, count)
