"""A rank that dies (SIGKILL) or hangs ends the job on the other rank in bounded time, with an error
naming the missing rank, the collective, the timeout in force and the setting that changes it.
Real gloo process groups, 2 processes; the time from the fault to the survivor's error is measured."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from trainer.strategies import DDPStrategy
from tests.helpers.distributed import _worker, context, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

TIMEOUT = 15  # seconds: long enough for the two processes' start-up skew on a loaded 2-core machine


class Faulty(TrainModule):
    def __init__(self, fault: str, mark: str) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.fault, self.mark = fault, mark

    def training_step(self, batch, batch_idx):
        if batch_idx == 2 and os.environ["RANK"] == "1":
            with open(self.mark, "w") as f:
                f.write(repr(time.time()))
            if self.fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)  # hung: never returns
        x, y = batch
        return ((self.layer(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _survivor(fault: str, mark: str):
    trainer = Trainer(max_epochs=1, strategy=DDPStrategy(timeout=TIMEOUT), logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    try:
        trainer.fit(Faulty(fault, mark), DataLoader(TensorDataset(torch.randn(16, 3), torch.randn(16, 1)),
                                                    batch_size=2))
    except Exception as err:  # noqa: BLE001 - the error is the result
        return {"type": type(err).__name__, "message": str(err), "at": time.time()}
    return None


def _run(fault: str, tmp_path) -> tuple[dict, float]:
    ctx = context()
    queue, port, mark = ctx.Queue(), free_port(), str(tmp_path / "fault_time")
    procs = [ctx.Process(target=_worker, args=(_survivor, rank, 2, port, queue, {"fault": fault, "mark": mark},
                                               dict(os.environ))) for rank in range(2)]
    for p in procs:
        p.start()
    try:
        rank, status, result = queue.get(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.join(timeout=10)
    assert rank == 0 and status == "ok" and result is not None, (rank, status, result)
    with open(mark) as f:
        return result, result["at"] - float(f.read())


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_dead_or_hung_rank_is_named_in_bounded_time(fault, tmp_path):
    result, seconds = _run(fault, tmp_path)
    message = result["message"]
    assert result["type"] == "CollectiveFailure"
    assert message.startswith("Rank 0 of 2 gave up waiting in DDP's gradient all_reduce in backward: rank 1 "
                              "did not reach it")
    assert f"The timeout in force is {TIMEOUT} s; change it with DDPStrategy(timeout=seconds)" in message
    assert "collective_timeout in `trainer config`" in message
    if fault == "kill":
        assert "its process is gone" in message
        assert seconds < 10  # the peer's socket closes: no need to wait for the timeout
    else:
        assert "did not answer within the timeout (15 s)" in message
        assert TIMEOUT - 1 < seconds < TIMEOUT + 10  # the timeout, plus the 3 s check-in on the store
    print(f"{fault}: {seconds:.1f} s from the fault to the survivor's error")
