"""DDP on 2 CPU processes against 1 process on the same global batch, and the time from
`trainer launch` to the first training step.

Each round runs, side by side: one process training on the whole global batch (2 threads, the
machine's cores), then `trainer launch --num-processes 2` with half the batch per process (torchrun
gives each 1 thread). Rounds are interleaved and the medians reported, because these machines are
noisy. Run: `python benchmarks/ddp.py [--rounds 5] [--steps 60]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    sys.path.insert(0, {root!r})
    from callbacks import Callback
    from trainer import Trainer, TrainModule

    out, global_batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                           torch.nn.ReLU(), torch.nn.Linear(512, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Clock(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step == 0 and batch_idx == 0:
                self.first = time.time()
            if trainer.global_step == 10 and not hasattr(self, "warm"):
                self.warm = time.perf_counter()

        def on_train_end(self, trainer, module):
            self.end = time.perf_counter()

    clock = Clock()
    trainer = Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      accelerator="cpu", callbacks=[clock])
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    g = torch.Generator().manual_seed(0)
    n = global_batch * (steps + 1)
    data = TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))
    trainer.fit(Net(), DataLoader(data, batch_size=global_batch // world))
    if trainer.is_global_zero:
        samples = (steps - 10) * global_batch
        json.dump({{"first_step": clock.first, "samples_per_s": samples / (clock.end - clock.warm)}}, open(out, "w"))
""")


def _run(cmd: list[str], out: str, env: dict) -> dict:
    start = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = json.load(open(out))
    result["to_first_step"] = result["first_step"] - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--global-batch", type=int, default=128)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    script = os.path.join(tmp, "worker.py")
    open(script, "w").write(WORKER.format(root=ROOT))
    out = os.path.join(tmp, "out.json")
    env = {**os.environ, "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml")}
    single_env = {**env, "OMP_NUM_THREADS": "2"}
    rows: dict[str, list[dict]] = {"1 process": [], "DDP, 2 processes": []}
    common = [out, str(args.global_batch), str(args.steps)]
    for _ in range(args.rounds):
        rows["1 process"].append(_run([sys.executable, script, *common], out, single_env))
        rows["DDP, 2 processes"].append(_run([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2",
                                              "--cpu", script, *common], out, env))
    base = statistics.median(r["samples_per_s"] for r in rows["1 process"])
    print(f"MLP 256-512-512-10, global batch {args.global_batch}, {args.steps} steps, median of {args.rounds} "
          "interleaved rounds")
    print(f"{'':<18}{'samples/s':>11}{'vs 1 process':>14}{'start to first step':>22}")
    for name, results in rows.items():
        speed = statistics.median(r["samples_per_s"] for r in results)
        first = statistics.median(r["to_first_step"] for r in results)
        print(f"{name:<18}{speed:>11.0f}{speed / base:>13.2f}x{first:>21.2f}s")


if __name__ == "__main__":
    main()
