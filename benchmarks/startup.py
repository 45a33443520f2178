"""Start-up: ``import trainer`` over ``import torch``, and ``trainer launch`` against raw torchrun.

    python benchmarks/startup.py                 # 10 import runs, 5 launch rounds (~3 min idle)
    python benchmarks/startup.py --launch-rounds 0

Import: fresh interpreters, bytecode cache warm; each times ``import torch`` and then ``import
trainer`` in the same process; the runs with and without ``import trainer`` alternate. Launch: the
same raw PyTorch DDP script (2 processes, gloo, a few steps) started by ``torchrun --standalone``
and by ``trainer launch --cpu --num-processes 2``, and a Trainer script started by ``trainer
launch``; the time from starting the command to rank zero's first optimizer step. Each round runs
the three in a shuffled order; medians and ranges over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IMPORT_GOAL_S, LAUNCH_GOAL_S = 0.05, 0.3

RAW = textwrap.dedent("""
    import os, sys, time
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        model(torch.randn(16, 64)).sum().backward()
        opt.step()
        opt.zero_grad()
        if step == 0 and dist.get_rank() == 0:
            open(sys.argv[1], "w").write(repr(time.time()))
    dist.destroy_process_group()
""")

TRAINER = textwrap.dedent("""
    import sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from trainer import Trainer, TrainModule
    from trainer.callbacks import Callback

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 8)
        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class First(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 0 and trainer.is_global_zero:
                open(sys.argv[1], "w").write(repr(time.time()))

    trainer = Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      accelerator="cpu", callbacks=[First()])
    trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(96, 64)), batch_size=16))
""")


def _env(tmp: str) -> dict[str, str]:
    env = {**os.environ, "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml"), "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def time_import(with_trainer: bool, env: dict[str, str]) -> tuple[float, float, float, float]:
    """Wall and CPU seconds of ``import torch``, then of ``import trainer`` after it (0 without)."""
    code = ("import time; t0, c0 = time.perf_counter(), time.process_time(); import torch; "
            "t1, c1 = time.perf_counter(), time.process_time(); " + ("import trainer; " if with_trainer else "")
            + "t2, c2 = time.perf_counter(), time.process_time(); print(t1 - t0, t2 - t1, c1 - c0, c2 - c1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    torch_s, extra_s, torch_cpu, extra_cpu = (float(x) for x in out.stdout.split())
    return torch_s, extra_s, torch_cpu, extra_cpu


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_launch(cmd: list[str], stamp: str, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall seconds from the command's start to rank zero's first step, and the CPU seconds of every
    process the command started, to its exit (launcher, workers: on a shared machine the steady one)."""
    if os.path.exists(stamp):
        os.remove(stamp)
    cpu = _children_cpu()
    start = time.time()
    proc = subprocess.run([*cmd, stamp], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if proc.returncode or not os.path.exists(stamp):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(Path(stamp).read_text()) - start, _children_cpu() - cpu


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--import-runs", type=int, default=10, help="interleaved runs with and without import trainer")
    p.add_argument("--launch-rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", help="also write startup.md and startup.png in this directory")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="startup-")
    env = _env(tmp)
    time_import(True, env)  # fill the bytecode and file caches once, untimed
    plain, extra, plain_cpu, extra_cpu = [], [], [], []
    for _ in range(args.import_runs):
        torch_s, _, torch_cpu, _ = time_import(False, env)
        plain.append(torch_s)
        plain_cpu.append(torch_cpu)
        _, extra_s, _, extra_c = time_import(True, env)
        extra.append(extra_s)
        extra_cpu.append(extra_c)
    raw, ours = os.path.join(tmp, "raw.py"), os.path.join(tmp, "trainer_script.py")
    Path(raw).write_text(RAW)
    Path(ours).write_text(TRAINER)
    stamp = os.path.join(tmp, "first_step")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launch = [sys.executable, "-m", "trainer.cli", "launch", "--cpu", "--num-processes", "2"]
    commands = {"raw script, torchrun": [*torchrun, raw], "raw script, trainer launch": [*launch, raw],
                "Trainer script, trainer launch": [*launch, ours]}
    launches: dict[str, list[float]] = {name: [] for name in commands}
    launch_cpu: dict[str, list[float]] = {name: [] for name in commands}
    rng = random.Random(args.seed)
    launch_env = {**env, "OMP_NUM_THREADS": "1"}
    for _ in range(args.launch_rounds):
        order = list(commands)
        rng.shuffle(order)
        for name in order:
            wall, cpu = time_launch(commands[name], stamp, launch_env, tmp)
            launches[name].append(wall)
            launch_cpu[name].append(cpu)
    table, bars = _render(args, plain, extra, launches, (plain_cpu, extra_cpu, launch_cpu))
    print(table)
    if args.results:
        sys.path.insert(0, str(HERE))
        from _report import write_results

        for path in write_results(args.results, "startup", "Start-up: trainer launch vs raw torchrun", table, bars,
                                  "time to the first step / raw torchrun (same round)"):
            print(f"wrote {path}", file=sys.stderr)


def _render(args: argparse.Namespace, plain: list[float], extra: list[float], launches: dict[str, list[float]],
            cpu: tuple[list[float], list[float], dict[str, list[float]]]) -> tuple[str, list[tuple[str, list[float]]]]:
    med = statistics.median
    plain_cpu, extra_cpu, launch_cpu = cpu
    lines = [f"Import: {args.import_runs} fresh interpreters each way, alternating; launch: {args.launch_rounds} rounds, "
             "2 processes over gloo, time from the command's start to rank zero's first optimizer step. CPU: the "
             "process's CPU seconds for an import; for a launch, those of every process it started, to its exit "
             "(on a shared machine CPU time stays steady where wall time waits for a core).", "",
             "| measurement | median | range | goal | CPU s, median (range) |", "|---|---:|---:|---|---:|"]
    lines.append(f"| `import torch` | {med(plain):.3f} s | {min(plain):.3f}-{max(plain):.3f} s | | "
                 f"{med(plain_cpu):.3f} ({min(plain_cpu):.3f}-{max(plain_cpu):.3f}) |")
    verdict = "met" if med(extra) <= IMPORT_GOAL_S else "NOT met"
    cpu_verdict = "met" if med(extra_cpu) <= IMPORT_GOAL_S else "NOT met"
    lines.append(f"| `import trainer` after `import torch` | +{med(extra):.3f} s | {min(extra):.3f}-{max(extra):.3f} s "
                 f"| <= +{IMPORT_GOAL_S} s ({verdict}; in CPU time {cpu_verdict}) | +{med(extra_cpu):.3f} "
                 f"({min(extra_cpu):.3f}-{max(extra_cpu):.3f}) |")
    bars = []
    if launches and all(launches.values()):
        base = launches["raw script, torchrun"]
        for name, times in launches.items():
            over = [t - b for t, b in zip(times, base)]
            goal = ""
            if name != "raw script, torchrun":
                goal = f"<= +{LAUNCH_GOAL_S} s over torchrun: +{med(over):.2f} s median " \
                       f"({'met' if med(over) <= LAUNCH_GOAL_S else 'NOT met'})"
            c, c_base = launch_cpu[name], launch_cpu["raw script, torchrun"]
            over_cpu = "" if name == "raw script, torchrun" else \
                f", {med(x - b for x, b in zip(c, c_base)):+.2f} over torchrun"
            lines.append(f"| {name}: to first step | {med(times):.2f} s | {min(times):.2f}-{max(times):.2f} s | {goal} | "
                         f"{med(c):.2f} ({min(c):.2f}-{max(c):.2f}){over_cpu} |")
            bars.append((name, [t / b for t, b in zip(times, base)]))
    if args.import_runs < 5 or args.launch_rounds < 3:
        lines.append("\nSMOKE RUN (few runs): the numbers are not meaningful.")
    return "\n".join(lines), bars


if __name__ == "__main__":
    main()
