"""GAN family, written as a Lightning user writes it: manual optimization, ``training_step(self, batch)``
without batch_idx, two optimizers returned from configure_optimizers, toggle_optimizer / manual_backward /
untoggle_optimizer around each update, a generator with BatchNorm, imports through lightning.pytorch.core and
lightning.pytorch.trainer.

The data: points of a Gaussian in 4 dimensions centred away from the origin; the generator starts near the
origin and has to move its samples onto the data.

    python gan.py OUT_DIR

Writes OUT_DIR/result.json (the numbers the test checks) and OUT_DIR/weights.pt (the module's final state).
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning.pytorch import seed_everything
from lightning.pytorch.core import LightningModule
from lightning.pytorch.trainer import Trainer

DIM = 4
DATA_MEAN = torch.tensor([2.0, -1.0, 0.5, 1.5])


class Generator(nn.Module):
    def __init__(self, latent_dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(latent_dim, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2),
                                   nn.Linear(hidden, DIM))

    def forward(self, z):
        return self.model(z)


class Discriminator(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(DIM, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.model(x)


class GAN(LightningModule):
    def __init__(self, latent_dim: int = 8, lr: float = 2e-3, b1: float = 0.5, b2: float = 0.999) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent_dim)
        self.discriminator = Discriminator()
        self.sample_z = torch.randn(256, latent_dim)
        self.example_input_array = torch.zeros(2, latent_dim)
        self.sample_means = []

    def forward(self, z):
        return self.generator(z)

    def training_step(self, batch):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent_dim).type_as(real)
        ones = torch.ones(real.size(0), 1).type_as(real)
        zeros = torch.zeros(real.size(0), 1).type_as(real)

        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z)), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        real_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
        fake_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z).detach()), zeros)
        d_loss = (real_loss + fake_loss) / 2
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def configure_optimizers(self):
        betas = (self.hparams.b1, self.hparams.b2)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas)
        return opt_g, opt_d

    def on_train_epoch_start(self):
        if self.current_epoch == 0:
            self.sample_means.append(self._sample_mean())

    def on_train_epoch_end(self):
        self.sample_means.append(self._sample_mean())

    def _sample_mean(self):
        self.generator.eval()
        with torch.no_grad():
            mean = self(self.sample_z.type_as(self.generator.model[0].weight)).mean(dim=0)
        self.generator.train()
        return mean.tolist()


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    seed_everything(42)
    points = DATA_MEAN + 0.3 * torch.randn(512, DIM, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(points, torch.zeros(512)), batch_size=64, shuffle=True)
    model = GAN()
    trainer = Trainer(max_epochs=8, accelerator="cpu", devices=1, default_root_dir=out, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)

    opt_g, opt_d = (opt.optimizer if hasattr(opt, "optimizer") else opt for opt in trainer.optimizers)
    torch.save(model.state_dict(), os.path.join(out, "weights.pt"))
    result = {
        "sample_means": model.sample_means,
        "data_mean": DATA_MEAN.tolist(),
        "global_step": trainer.global_step,
        "batches_per_epoch": len(loader),
        "epochs": trainer.current_epoch,
        "generator_steps": sorted({int(s["step"]) for s in opt_g.state.values()}),
        "discriminator_steps": sorted({int(s["step"]) for s in opt_d.state.values()}),
        "logged": sorted(k for k in trainer.callback_metrics),
        "d_loss": float(trainer.callback_metrics["d_loss"]),
        "g_loss": float(trainer.callback_metrics["g_loss"]),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
