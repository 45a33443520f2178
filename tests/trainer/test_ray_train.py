"""Ray Train as a supported path: a local Ray cluster with 2 CPU workers runs ``Trainer(strategy="ddp")``
and the ``Accelerator`` inside Ray's ``TorchTrainer``, each equal to one process on the big batch;
``RayTrainReportCallback`` reports checkpoints to Ray, and a worker group Ray restarts after a worker died
resumes from the last one (it trains only the epoch that was lost) and ends on the same weights.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests import ROOT

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _fit(batch: int, callbacks=(), ckpt_path=None, record=None):
    """Two epochs of tests/strategies/test_ddp.py's model and data (24 samples) with the Trainer; on one process
    the same seeded permutation as the DistributedSampler of several, so a step of ``batch`` there takes the
    samples that a step of ``batch`` per process takes together."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from tests.strategies.test_ddp import Model, _data
    from trainer import Trainer

    x, y, mask = _data()
    data = TensorDataset(x, y, mask)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    sampler = None if several else DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, num_sanity_val_steps=0, callbacks=list(callbacks),
                      strategy="ddp" if several else "auto")
    model = Model()
    trainer.fit(model, DataLoader(data, batch_size=batch, sampler=sampler, shuffle=several), ckpt_path=ckpt_path)
    return [p.detach().tolist() for p in model.parameters()], trainer


def _trainer_loop(config: dict) -> None:
    import time

    import ray.train

    from trainer.callbacks import Callback, RayTrainReportCallback

    class Record(Callback):
        def on_train_start(self, trainer, module):
            self.first_step = trainer.global_step

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            # the first attempt: rank 1 dies in the second epoch, after the first epoch's report
            if (trainer.current_epoch == 1 and trainer.global_step == 9 and trainer.global_rank == 1
                    and not os.path.exists(config["crashed"])):
                open(config["crashed"], "w").close()
                # Ray's controller collects a report when it next polls the workers; the report of epoch 0 is
                # registered once its checkpoint manager has written its snapshot (Ray writes it at each
                # registration, and only then). Dying before that would lose the checkpoint to resume from.
                deadline = time.monotonic() + 60
                while not os.path.exists(config["snapshot"]) and time.monotonic() < deadline:
                    time.sleep(0.1)
                os._exit(1)

    record = Record()
    resume = RayTrainReportCallback.latest_checkpoint()
    weights, trainer = _fit(batch=2, callbacks=[RayTrainReportCallback(), record], ckpt_path=resume)
    if trainer.is_global_zero:
        with open(config["out"], "w") as f:
            json.dump({"weights": weights, "world": trainer.world_size, "steps": trainer.global_step,
                       "first_step": record.first_step, "resumed": resume is not None}, f)
    ray.train.report({"done": 1})


def _accelerator_loop(config: dict) -> None:
    out = _accelerate(batch=2)
    if out.pop("main"):
        with open(config["out"], "w") as f:
            json.dump(out, f)


def _accelerate(batch: int) -> dict:
    """An Accelerate-style loop: 16 samples in order, SGD, 2 epochs."""
    from torch.utils.data import DataLoader, TensorDataset

    from trainer import Accelerator

    accelerator = Accelerator(cpu=True)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(TensorDataset(x, y), batch_size=batch))
    for _ in range(2):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    weights = [p.detach().tolist() for p in accelerator.unwrap_model(model).parameters()]
    return {"weights": weights, "world": accelerator.num_processes, "main": accelerator.is_main_process}


@pytest.fixture(scope="module")
def local_ray():
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with pytest.MonkeyPatch.context() as patch:
        # Ray Train's controller polls its workers every 2 s by default, to see a report, a finished run or a
        # dead worker: each wait paid up to that at every step of a run (a missed poll only waits on, Ray marks
        # a worker dead after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 600 s). Ray passes this variable on to
        # its controller and workers.
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


def _run(loop, tmp_path, max_failures: int = 0) -> dict:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {"out": str(tmp_path / "out.json"), "crashed": str(tmp_path / "crashed"),
              "snapshot": str(tmp_path / "ray" / "run" / "checkpoint_manager_snapshot.json")}
    TorchTrainer(loop, train_loop_config=config,
                 scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="run",
                                      failure_config=FailureConfig(max_failures=max_failures))).fit()
    return json.loads((tmp_path / "out.json").read_text())


def _close(got: list, want: list) -> None:
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.tensor(g), torch.tensor(w), atol=1e-6, rtol=1e-5)


def test_trainer_on_two_ray_workers_equals_one_process_and_resumes_after_a_worker_dies(local_ray, tmp_path):
    ray_run = _run(_trainer_loop, tmp_path, max_failures=1)
    assert (tmp_path / "crashed").exists()  # the first attempt lost rank 1 in epoch 1 ...
    assert ray_run["resumed"] and ray_run["first_step"] == 6  # ... and the restarted group began at epoch 1's start
    single, trainer = _fit(batch=4)
    assert ray_run["world"] == 2 and ray_run["steps"] == trainer.global_step == 12
    _close(ray_run["weights"], single)


def test_accelerator_on_two_ray_workers_equals_one_process(local_ray, tmp_path):
    ray_run = _run(_accelerator_loop, tmp_path)
    single = _accelerate(batch=4)
    assert ray_run["world"] == 2 and single["world"] == 1
    _close(ray_run["weights"], single["weights"])


def test_report_schedule_is_checked():
    from trainer.callbacks import RayTrainReportCallback

    with pytest.raises(ValueError, match=r"every_n_epochs=0\): expected a whole number >= 1, or None"):
        RayTrainReportCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match=r"nothing would ever be reported"):
        RayTrainReportCallback(every_n_epochs=None)


@pytest.mark.parametrize("name", ["fsdp", "deepspeed", "ddp"])
def test_sharded_strategies_are_refused_with_their_reason(name):
    from types import SimpleNamespace

    from trainer.callbacks import RayTrainReportCallback
    from trainer.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy

    strategy = {"fsdp": FSDPStrategy, "deepspeed": DeepSpeedStrategy, "ddp": DDPStrategy}[name]()
    callback = RayTrainReportCallback()
    trainer = SimpleNamespace(strategy=strategy)
    if name == "ddp":
        callback.setup(trainer, None, "fit")  # one file from rank zero is the whole state
        return
    with pytest.raises(ValueError, match=r"written in shards, one per rank, and Ray takes rank zero's directory"):
        callback.setup(trainer, None, "fit")
