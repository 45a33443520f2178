"""The training loops that ``overhead.py`` compares, one function per variant.

Every variant trains the same model (32 -> 64 -> 1 MLP, MSE, SGD) from the same initial
weights on the same in-memory batches, through a ``torch.utils.data.DataLoader`` built
the same way. Only the loop around ``forward / backward / step`` differs.

Timing: the dataset records ``time.perf_counter()`` when the loader fetches chosen
micro-batch indices (``MarkedData``). The span between the fetch of the first timed
micro-batch and the fetch of the micro-batch right after the last timed one covers exactly
the timed optimizer steps, whatever the loop does around them (look-ahead fetching, hooks,
logging), and it leaves out set-up, warm-up, the tail and tear-down. The marks cost a
set lookup per fetch, the same in every variant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

IN_DIM, HIDDEN, OUT_DIM, BATCH = 32, 64, 1, 32
LR = 0.01


# -- data ------------------------------------------------------------------------------------
class MarkedData(Dataset):
    """A fixed in-memory dataset that notes the time when chosen indices are fetched.

    ``prebuilt``: item ``i`` is micro-batch ``i`` (a pair of views into one tensor), served
    by ``DataLoader(batch_size=None)``, so the loader does no per-sample work.
    ``samples``: item ``i`` is one sample, served by ``DataLoader(batch_size=32)``
    (the textbook ``TensorDataset`` path: 32 ``__getitem__`` calls and a collate per batch).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mark_at: set[int]) -> None:
        self.x, self.y = x, y
        self.mark_at = mark_at
        self.marks: dict[int, float] = {}
        self.cpu_marks: dict[int, float] = {}  # process CPU time: steady when other processes share the cores

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in self.mark_at:
            self.marks[i] = time.perf_counter()
            self.cpu_marks[i] = time.process_time()
        return self.x[i], self.y[i]


@dataclass
class Plan:
    """What one worker trains: sizes, and where the timed window starts and ends."""

    accum: int            # micro-batches per optimizer step
    steps: int            # timed optimizer steps
    warmup: int           # optimizer steps before the timed window
    tail: int             # optimizer steps after it (covers look-ahead fetching)
    chunks: int           # the timed window is also split in this many chunks
    data: str = "prebuilt"
    seed: int = 0
    boundaries: list[int] = field(default_factory=list)  # optimizer-step index of each mark

    def __post_init__(self) -> None:
        n = max(1, min(self.chunks, self.steps))
        self.boundaries = sorted({self.warmup + round(j * self.steps / n) for j in range(n + 1)})

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps + self.tail

    @property
    def total_micro(self) -> int:
        return self.total_steps * self.accum

    def build_loader(self) -> tuple[DataLoader, MarkedData]:
        g = torch.Generator().manual_seed(1234 + self.seed)
        x = torch.randn(self.total_micro * BATCH, IN_DIM, generator=g)
        w = torch.randn(IN_DIM, OUT_DIM, generator=g)
        y = x @ w + 0.1 * torch.randn(len(x), OUT_DIM, generator=g)
        if self.data == "prebuilt":
            unit = 1
            x, y = x.view(self.total_micro, BATCH, IN_DIM), y.view(self.total_micro, BATCH, OUT_DIM)
            kwargs: dict[str, Any] = {"batch_size": None}
        elif self.data == "samples":
            unit = BATCH
            kwargs = {"batch_size": BATCH}
        else:
            raise ValueError(f"unknown data mode {self.data!r}")
        dataset = MarkedData(x, y, {b * self.accum * unit for b in self.boundaries})
        return DataLoader(dataset, shuffle=False, num_workers=0, **kwargs), dataset

    def timing(self, dataset: MarkedData) -> dict[str, Any]:
        unit = 1 if self.data == "prebuilt" else BATCH
        times = [dataset.marks.get(b * self.accum * unit) for b in self.boundaries]
        if any(t is None for t in times):
            raise RuntimeError(f"the loop did not fetch every timed batch (marks {sorted(dataset.marks)})")
        span = times[-1] - times[0]
        chunk_us = [(t1 - t0) * 1e6 / (b1 - b0) for t0, t1, b0, b1 in
                    zip(times, times[1:], self.boundaries, self.boundaries[1:])]
        first, last = (b * self.accum * unit for b in (self.boundaries[0], self.boundaries[-1]))
        cpu_span = dataset.cpu_marks[last] - dataset.cpu_marks[first]
        return {"us_per_step": span * 1e6 / self.steps, "us_per_micro": span * 1e6 / (self.steps * self.accum),
                "cpu_us_per_step": cpu_span * 1e6 / self.steps, "chunk_us_per_step": chunk_us, "timed_s": span}


def make_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(IN_DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, OUT_DIM))


def checksum(module: torch.nn.Module) -> float:
    """Sum of |weights| after training: every variant should land on (nearly) the same value."""
    with torch.no_grad():
        return float(sum(p.detach().abs().sum() for p in module.parameters()))


mse = torch.nn.functional.mse_loss


# -- the loops -------------------------------------------------------------------------------
def run_plain(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    model = make_net(plan.seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    k, steps = plan.accum, 0
    if k == 1:
        for x, y in loader:
            loss = mse(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            steps += 1
    else:
        for i, (x, y) in enumerate(loader):
            loss = mse(model(x), y) / k
            loss.backward()
            if (i + 1) % k == 0:
                opt.step()
                opt.zero_grad()
                steps += 1
    return model, steps


def _trainer_module(log: bool) -> Any:
    from trainer import TrainModule

    class BenchModule(TrainModule):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.net = make_net(seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    if log:
        class LoggingModule(BenchModule):
            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                loss = mse(self.net(x), y)
                self.log("train_loss", loss)
                return loss
        return LoggingModule

    class QuietModule(BenchModule):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return mse(self.net(x), y)
    return QuietModule


def _run_trainer(plan: Plan, loader: DataLoader, tmp: str, defaults: bool, force_bar: bool = False
                 ) -> tuple[torch.nn.Module, int]:
    from trainer import Trainer

    module = _trainer_module(log=defaults)(plan.seed)
    if defaults:
        callbacks = None
        if force_bar:
            from trainer.callbacks import ProgressBar
            callbacks = [ProgressBar(force=True)]
        trainer = Trainer(max_steps=plan.total_steps, accumulate_grad_batches=plan.accum,
                          default_root_dir=tmp, callbacks=callbacks)
    else:
        trainer = Trainer(max_steps=plan.total_steps, accumulate_grad_batches=plan.accum, default_root_dir=tmp,
                          enable_progress_bar=False, logger=False, enable_checkpointing=False,
                          num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return module, trainer.global_step


def run_trainer_defaults(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    return _run_trainer(plan, loader, tmp, defaults=True)


def run_trainer_defaults_bar(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    return _run_trainer(plan, loader, tmp, defaults=True, force_bar=True)


def run_trainer_barebones(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    return _run_trainer(plan, loader, tmp, defaults=False)


def _run_trainer_logging(plan: Plan, loader: DataLoader, tmp: str, kinds: tuple[str, ...]) -> tuple[torch.nn.Module, int]:
    """Barebones, plus `self.log` of the loss every step and the named loggers at log_every_n_steps=50."""
    import os

    from trainer.callbacks import CSVLogger, MLflowLogger, TensorBoardLogger, WandbLogger
    from trainer import Trainer

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    module = _trainer_module(log=True)(plan.seed)
    make = {"tensorboard": lambda: TensorBoardLogger(tmp), "wandb": lambda: WandbLogger(save_dir=tmp, offline=True),
            "mlflow": lambda: MLflowLogger(save_dir=tmp), "csv": lambda: CSVLogger(tmp)}
    loggers = [make[kind]() for kind in kinds]
    trainer = Trainer(max_steps=plan.total_steps, accumulate_grad_batches=plan.accum, default_root_dir=tmp,
                      enable_progress_bar=False, logger=loggers or False, enable_checkpointing=False,
                      num_sanity_val_steps=0, log_every_n_steps=50)
    trainer.fit(module, loader)
    for logger in loggers:  # W&B keeps its run open for a later stage; finish it inside the temp dir's life
        getattr(logger, "close", lambda: None)()
    return module, trainer.global_step


def run_trainer_all_loggers(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    """Barebones, plus `self.log` of the loss every step and every logger (TensorBoard, W&B offline,
    MLflow file store, CSV) at log_every_n_steps=50: the cost of logging alone."""
    return _run_trainer_logging(plan, loader, tmp, ("tensorboard", "wandb", "mlflow", "csv"))


def _one_logger(kind: str) -> Callable[[Plan, DataLoader, str], tuple[torch.nn.Module, int]]:
    return lambda plan, loader, tmp: _run_trainer_logging(plan, loader, tmp, (kind,) if kind else ())


def run_accelerator(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    from trainer import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=plan.accum)
    model = make_net(plan.seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    model.train()
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = mse(model(x), y)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
    return accelerator.unwrap_model(model), accelerator.step // plan.accum


# -- peers (only when installed) ---------------------------------------------------------------
def _lightning_module(log: bool) -> Any:
    import lightning.pytorch as pl

    class LitBench(pl.LightningModule):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.net = make_net(seed)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    if log:
        class LitLogging(LitBench):
            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                x, y = batch
                loss = mse(self.net(x), y)
                self.log("train_loss", loss)
                return loss
        return LitLogging

    class LitQuiet(LitBench):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return mse(self.net(x), y)
    return LitQuiet


def _run_lightning(plan: Plan, loader: DataLoader, tmp: str, defaults: bool) -> tuple[torch.nn.Module, int]:
    import lightning.pytorch as pl

    module = _lightning_module(log=defaults)(plan.seed)
    common = {"max_steps": plan.total_steps, "accumulate_grad_batches": plan.accum, "default_root_dir": tmp,
              "accelerator": "cpu", "devices": 1}
    if defaults:
        trainer = pl.Trainer(**common)
    else:
        trainer = pl.Trainer(**common, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                             enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return module, trainer.global_step


def run_lightning_defaults(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    return _run_lightning(plan, loader, tmp, defaults=True)


def run_lightning_barebones(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    return _run_lightning(plan, loader, tmp, defaults=False)


def run_fabric(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    model = make_net(plan.seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt = fabric.setup(model, opt)
    loader = fabric.setup_dataloaders(loader)
    model.train()
    k, steps = plan.accum, 0
    if k == 1:
        for x, y in loader:
            loss = mse(model(x), y)
            fabric.backward(loss)
            opt.step()
            opt.zero_grad()
            steps += 1
    else:
        for i, (x, y) in enumerate(loader):
            is_step = (i + 1) % k == 0
            with fabric.no_backward_sync(model, enabled=not is_step):
                loss = mse(model(x), y)
                fabric.backward(loss / k)
            if is_step:
                opt.step()
                opt.zero_grad()
                steps += 1
    return model.module if hasattr(model, "module") else model, steps


def run_accelerate(plan: Plan, loader: DataLoader, tmp: str) -> tuple[torch.nn.Module, int]:
    from accelerate import Accelerator as HFAccelerator

    accelerator = HFAccelerator(cpu=True, gradient_accumulation_steps=plan.accum)
    model = make_net(plan.seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    model.train()
    steps = 0
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = mse(model(x), y)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
            steps += accelerator.sync_gradients
    return accelerator.unwrap_model(model), steps


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    run: Callable[[Plan, DataLoader, str], tuple[torch.nn.Module, int]]
    requires: str | None = None   # an optional package that must be importable
    note: str = ""
    optional: bool = False        # measured only when named in --variants


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("plain", "plain PyTorch loop", run_plain),
    Variant("trainer_defaults", "Trainer, defaults", run_trainer_defaults,
            note="goal <= 1.10x"),
    Variant("trainer_defaults_bar", "Trainer, defaults + ProgressBar(force=True)", run_trainer_defaults_bar),
    Variant("trainer_barebones", "Trainer, barebones", run_trainer_barebones, note="goal <= 1.05x"),
    Variant("trainer_all_loggers", "Trainer, barebones + every logger", run_trainer_all_loggers, "wandb",
            note="goal: <= 3% over barebones"),
    # the cost of logging piece by piece (not in the default run: name them with --variants)
    Variant("trainer_self_log", "Trainer, barebones + self.log, no logger", _one_logger(""), optional=True),
    Variant("trainer_csv", "Trainer, barebones + self.log + CSV", _one_logger("csv"), optional=True),
    Variant("trainer_tensorboard", "Trainer, barebones + self.log + TensorBoard", _one_logger("tensorboard"),
            "tensorboard", optional=True),
    Variant("trainer_mlflow", "Trainer, barebones + self.log + MLflow", _one_logger("mlflow"), "mlflow",
            optional=True),
    Variant("trainer_wandb", "Trainer, barebones + self.log + W&B offline", _one_logger("wandb"), "wandb",
            optional=True),
    Variant("accelerator", "Accelerator door", run_accelerator),
    Variant("lightning_defaults", "Lightning Trainer, defaults", run_lightning_defaults, "lightning",
            note="reference 4.6x (accum 4: 6.4x)"),
    Variant("lightning_barebones", "Lightning Trainer, barebones", run_lightning_barebones, "lightning",
            note="reference 2.4x (accum 4: 2.8x)"),
    Variant("fabric", "Lightning Fabric", run_fabric, "lightning", note="reference 1.2x (accum 4: 1.3x)"),
    Variant("accelerate", "HF Accelerate", run_accelerate, "accelerate", note="reference 1.65x (accum 4: 1.9x)"),
]}
