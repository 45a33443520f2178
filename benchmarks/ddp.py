"""DDP on 2 CPU processes against 1 process on the same global batch, and the time from
`trainer launch` to the first training step.

Each round runs, side by side: one process training on the whole global batch (2 threads, the
machine's cores), then `trainer launch --num-processes 2` with half the batch per process (torchrun
gives each 1 thread). Rounds are interleaved and the medians reported, because these machines are
noisy. The same workload as a raw PyTorch loop (plain, and DDP under torchrun) is measured in the
same rounds, so the Trainer's own cost shows. Run: `python benchmarks/ddp.py [--rounds 5] [--steps 60]`.
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
    from trainer.callbacks import Callback
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


RAW = textwrap.dedent("""
    import json, os, sys, time
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    out, global_batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                              torch.nn.ReLU(), torch.nn.Linear(512, 10))
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    n = global_batch * (steps + 1)
    data = TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))
    sampler = DistributedSampler(data, shuffle=False) if world > 1 else None
    first = time.time()
    for step, (x, y) in enumerate(DataLoader(data, batch_size=global_batch // world, sampler=sampler)):
        if step == 10:
            warm = time.perf_counter()
        if step == steps:
            break
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    end = time.perf_counter()
    if int(os.environ.get("RANK", "0")) == 0:
        json.dump({"first_step": first, "samples_per_s": (steps - 10) * global_batch / (end - warm)}, open(out, "w"))
    if world > 1:
        dist.destroy_process_group()
""")


def _run(cmd: list[str], out: str, env: dict) -> dict:
    start = time.time()
    done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.load(open(out))
    result["to_first_step"] = result["first_step"] - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--results", help="also write ddp.md and ddp.png (ratio bars) in this directory")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    script = os.path.join(tmp, "worker.py")
    open(script, "w").write(WORKER.format(root=ROOT))
    raw = os.path.join(tmp, "raw.py")
    open(raw, "w").write(RAW)
    out = os.path.join(tmp, "out.json")
    env = {**os.environ, "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml")}
    single_env = {**env, "OMP_NUM_THREADS": "2"}
    rows: dict[str, list[dict]] = {"1 process": [], "DDP, 2 processes": [], "raw torch, 1 process": [],
                                   "raw torch DDP, 2": []}
    common = [out, str(args.global_batch), str(args.steps)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for _ in range(args.rounds):
        rows["1 process"].append(_run([sys.executable, script, *common], out, single_env))
        rows["DDP, 2 processes"].append(_run([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2",
                                              "--cpu", script, *common], out, env))
        rows["raw torch, 1 process"].append(_run([sys.executable, raw, *common], out, single_env))
        rows["raw torch DDP, 2"].append(_run([*torchrun, raw, *common], out, {**env, "OMP_NUM_THREADS": "1"}))
    base = statistics.median(r["samples_per_s"] for r in rows["1 process"])
    print(f"MLP 256-512-512-10, global batch {args.global_batch}, {args.steps} steps, median of {args.rounds} "
          "interleaved rounds")
    print(f"{'':<22}{'samples/s':>11}{'vs 1 process':>14}{'start to first step':>22}")
    for name, results in rows.items():
        speed = statistics.median(r["samples_per_s"] for r in results)
        first = statistics.median(r["to_first_step"] for r in results)
        print(f"{name:<22}{speed:>11.0f}{speed / base:>13.2f}x{first:>21.2f}s")
    if args.results:
        _write_results(args, rows)


def _write_results(args: argparse.Namespace, rows: dict[str, list[dict]]) -> None:
    """benchmarks/results/ddp.md and ddp.png: the Trainer against raw torch with the same process count."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _report import write_results

    pairs = [("this Trainer, 1 process", "1 process", "raw torch, 1 process"),
             ("this Trainer, DDP on 2 processes", "DDP, 2 processes", "raw torch DDP, 2")]
    lines = [f"MLP 256-512-512-10, global batch {args.global_batch}, {args.steps} steps (the first 10 untimed), "
             f"{args.rounds} interleaved rounds; ratio: samples/s over raw PyTorch with the same number of "
             "processes in the same round.", "",
             "| run | samples/s | raw torch samples/s | ratio (median) | range | start to first step | raw torch |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    bars = []
    for label, ours, raw in pairs:
        ratios = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(rows[ours], rows[raw])]
        med = lambda key, name: statistics.median(r[key] for r in rows[name])  # noqa: E731
        lines.append(f"| {label} | {med('samples_per_s', ours):.0f} | {med('samples_per_s', raw):.0f} | "
                     f"{statistics.median(ratios):.3f}x | {min(ratios):.3f}-{max(ratios):.3f}x | "
                     f"{med('to_first_step', ours):.2f} s | {med('to_first_step', raw):.2f} s |")
        bars.append((label, ratios))
    for path in write_results(args.results, "ddp", "DDP on 2 CPU processes: this Trainer vs raw PyTorch",
                              "\n".join(lines), bars, "samples/s / raw PyTorch (same processes, same round)",
                              better="higher"):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
