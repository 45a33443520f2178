"""Where logging's time goes, measured inside one training run.

overhead.py compares whole runs, which on a noisy shared machine cannot resolve a few percent.
This script trains the overhead benchmark's tiny MLP once with ``self.log`` every step and every
logger at log_every_n_steps=50, and times each call the loop makes at a log interval: reading
the logged values back (one flush), and each logger's ``log_metrics``. Medians per call, and
what that costs per training step at this interval. ``log_metrics`` runs on each logger's writer
thread, not the training thread (its share is the writer's work; benchmarks/logger_cost.py times what
the training thread pays).

    python benchmarks/logger_calls.py [--steps 4000] [--loggers tensorboard,wandb,mlflow,csv]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _timed(owner: Any, name: str, label: str, into: dict[str, list[float]]) -> None:
    original: Callable = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.setdefault(label, []).append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--loggers", default="tensorboard,wandb,mlflow,csv")
    args = parser.parse_args(argv)
    import torch

    import trainer.callbacks as callbacks
    from _variants import Plan, _run_trainer_logging
    from trainer.logs.publish import MetricsPublisher

    torch.set_num_threads(1)
    kinds = tuple(k for k in args.loggers.split(",") if k)
    names = {"tensorboard": "TensorBoardLogger", "wandb": "WandbLogger", "mlflow": "MLflowLogger", "csv": "CSVLogger"}
    times: dict[str, list[float]] = {}
    _timed(MetricsPublisher, "flush_train", "read back the logged values (flush)", times)
    for kind in kinds:
        _timed(getattr(callbacks, names[kind]), "log_metrics", f"{names[kind]}.log_metrics", times)
    plan = Plan(accum=1, steps=args.steps, warmup=50, tail=2, chunks=1)
    loader, dataset = plan.build_loader()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        _run_trainer_logging(plan, loader, tmp, kinds)
    step_us = plan.timing(dataset)["us_per_step"]
    print(f"\n{plan.total_steps} steps of the tiny MLP at {step_us:.1f} µs/step (self.log every step, "
          "log_every_n_steps=50); medians per call:\n")
    print("| call | calls | µs per call | µs per training step | share of a step |")
    print("|---|---:|---:|---:|---:|")
    for label, values in times.items():
        per_call = statistics.median(values) * 1e6
        per_step = sum(values) * 1e6 / plan.total_steps
        print(f"| {label} | {len(values)} | {per_call:.1f} | {per_step:.2f} | {100 * per_step / step_us:.1f}% |")


if __name__ == "__main__":
    main()
