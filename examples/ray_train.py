"""Train with the Trainer on a Ray cluster: Ray Train's TorchTrainer starts the workers and their process
group, Trainer(strategy="ddp") joins it, RayTrainReportCallback reports metrics and checkpoints to Ray,
and a worker group Ray restarts after a failure resumes from the last one.

    pip install "trainer[ray]"
    python examples/ray_train.py --workers 2             # a local Ray instance with 2 CPU workers
    RAY_ADDRESS=auto python examples/ray_train.py        # an existing cluster (`ray start --head` ...)
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.utils.data import DataLoader, TensorDataset


class Regression:  # built in each worker: Ray pickles the function, not the objects
    @staticmethod
    def module():
        from trainer import TrainModule

        class Net(TrainModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

            def training_step(self, batch, batch_idx):
                x, y = batch
                loss = torch.nn.functional.mse_loss(self.net(x), y)
                self.log("train_loss", loss, sync_dist=True)
                return loss

            def configure_optimizers(self):
                return torch.optim.AdamW(self.parameters(), lr=1e-3)

        return Net()

    @staticmethod
    def data(n: int = 4096) -> TensorDataset:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 16, generator=g)
        return TensorDataset(x, x.sin().sum(1, keepdim=True))


def train_loop_per_worker(config: dict) -> None:
    from trainer import Trainer, seed_everything
    from trainer.callbacks import RayTrainReportCallback

    seed_everything(0)
    trainer = Trainer(strategy="ddp", accelerator="cpu", max_epochs=config["epochs"], logger=False,
                      enable_progress_bar=False, callbacks=[RayTrainReportCallback(every_n_epochs=1)])
    loader = DataLoader(Regression.data(), batch_size=config["batch_size"], shuffle=True)
    # None on the first start; after Ray restarted the workers, the last reported checkpoint
    trainer.fit(Regression.module(), loader, ckpt_path=RayTrainReportCallback.latest_checkpoint())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--storage", default=os.path.abspath("runs/ray"), help="where Ray keeps the checkpoints")
    args = parser.parse_args()

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=args.workers, include_dashboard=False)
    result = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"epochs": args.epochs, "batch_size": args.batch_size},
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=False),
        run_config=RunConfig(storage_path=args.storage, name="regression",
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=3)),
    ).fit()
    print(f"metrics: {result.metrics}\ncheckpoint: {result.checkpoint}")


if __name__ == "__main__":
    main()
