"""Start-up: ``import trainer`` over ``import torch``, and ``trainer launch`` against raw torchrun.

    python benchmarks/startup.py                 # 10 import runs, 7 launch rounds (~6 min idle)
    python benchmarks/startup.py --launch-rounds 0

Import: fresh interpreters, bytecode cache warm; each times ``import torch`` and then ``import
trainer`` in the same process; the runs with and without ``import trainer`` alternate. Launch: a
raw PyTorch DDP script and a Trainer script (2 processes, gloo, a few steps), each started by
``torchrun --standalone --nproc-per-node 2`` and by ``trainer launch --cpu --num-processes 2``;
each launcher is compared with torchrun running the same script in the same round. Wall: from
starting the command to rank zero's first optimizer step. CPU: every rank writes its CPU seconds at
its first step and at its exit, so the launcher process's own share is the command's total minus
its workers'. Each round runs the four in a shuffled order; medians and ranges over rounds.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
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

# Each rank writes "<stamp>.<rank>" at its first optimizer step: when it started and reached the step
# (wall), its own CPU seconds by then, and those its launcher (its parent: torchrun's agent runs in the
# launcher's process) had used when it started the workers, read from /proc (None elsewhere).
STAMPS = textwrap.dedent("""
    import os, sys, time
    _START = time.time()

    def _launcher_cpu():
        try:
            fields = open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    _LAUNCHER_CPU = _launcher_cpu()

    def _first_step():
        with open(sys.argv[1] + "." + os.environ["RANK"], "w") as f:
            f.write(repr((_START, time.time(), time.process_time(), _LAUNCHER_CPU)))
""")

RAW = STAMPS + textwrap.dedent("""
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        model(torch.randn(16, 64)).sum().backward()
        opt.step()
        opt.zero_grad()
        if step == 0:
            _first_step()
    dist.destroy_process_group()
""")

TRAINER = STAMPS + textwrap.dedent("""
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
            if batch_idx == 0:
                _first_step()

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


@dataclasses.dataclass
class Launch:
    """One launch. Wall seconds from the command's start to rank zero's start and to its first optimizer
    step; CPU seconds of the launcher process before it started the workers, of the workers to their
    first step (summed over ranks), and of every process the command started, to its exit."""

    workers_start: float
    wall: float
    launcher_cpu: float | None
    workers_cpu: float
    total_cpu: float


def time_launch(cmd: list[str], stamp: str, env: dict[str, str], cwd: str, world_size: int = 2) -> Launch:
    stamps = [Path(f"{stamp}.{rank}") for rank in range(world_size)]
    for old in stamps:
        old.unlink(missing_ok=True)
    cpu = _children_cpu()
    start = time.time()
    proc = subprocess.run([*cmd, stamp], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    total = _children_cpu() - cpu
    if proc.returncode or not all(p.exists() for p in stamps):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ranks = [ast.literal_eval(p.read_text()) for p in stamps]
    return Launch(workers_start=ranks[0][0] - start, wall=ranks[0][1] - start, launcher_cpu=ranks[0][3],
                  workers_cpu=sum(rank[2] for rank in ranks), total_cpu=total)


def _launch_retrying(cmd: list[str], stamp: str, env: dict[str, str], cwd: str, failures: list[str]) -> Launch:
    """A run whose worker died after its first step (gloo aborts a rank now and then at
    destroy_process_group on a loaded machine) is run again, once, and counted in the notes."""
    try:
        return time_launch(cmd, stamp, env, cwd)
    except RuntimeError as err:
        failures.append(str(err).splitlines()[0])
        return time_launch(cmd, stamp, env, cwd)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--import-runs", type=int, default=10, help="interleaved runs with and without import trainer")
    p.add_argument("--launch-rounds", type=int, default=7)
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
    stamp = os.path.join(tmp, "stamp")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launch = [sys.executable, "-m", "trainer.cli", "launch", "--cpu", "--num-processes", "2"]
    commands = {"raw script, torchrun": [*torchrun, raw], "raw script, trainer launch": [*launch, raw],
                "Trainer script, torchrun": [*torchrun, ours], "Trainer script, trainer launch": [*launch, ours]}
    launches: dict[str, list[Launch]] = {name: [] for name in commands}
    rng = random.Random(args.seed)
    launch_env = {**env, "OMP_NUM_THREADS": "1"}
    failures: list[str] = []
    if args.launch_rounds >= 3:  # a smoke run's numbers are not meaningful (see _render): no warm-up launch
        time_launch(commands["Trainer script, trainer launch"], stamp, launch_env, tmp)  # warm caches, untimed
    for _ in range(args.launch_rounds):
        order = list(commands)
        rng.shuffle(order)
        for name in order:
            launches[name].append(_launch_retrying(commands[name], stamp, launch_env, tmp, failures))
    table, bars = _render(args, plain, extra, launches, (plain_cpu, extra_cpu), failures)
    print(table)
    if args.results:
        sys.path.insert(0, str(HERE))
        from _report import write_results

        for path in write_results(args.results, "startup", "Start-up: trainer launch vs raw torchrun", table, bars,
                                  "time to the first step / torchrun with the same script (same round)"):
            print(f"wrote {path}", file=sys.stderr)


def _spread(values: list[float], signed: bool = False) -> str:
    """``median (min to max)``, with a sign for differences."""
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))} to {fmt.format(max(values))})"


def _render(args: argparse.Namespace, plain: list[float], extra: list[float], launches: dict[str, list[Launch]],
            cpu: tuple[list[float], list[float]], failures: list[str]) -> tuple[str, list[tuple[str, list[float]]]]:
    med = statistics.median
    plain_cpu, extra_cpu = cpu
    lines = [f"Import: {args.import_runs} fresh interpreters each way, alternating. Launch: {args.launch_rounds} rounds "
             "of the four commands in a shuffled order, 2 processes over gloo; wall: from the command's start to "
             "rank zero's first optimizer step; each launcher is compared with torchrun running the same script in "
             "the same round. CPU seconds (steady on a shared machine where wall time waits for a core): the "
             "launcher process's when it started the workers (read by a worker from /proc), the workers' to their "
             "first step (both ranks), and those of every process the command started, to its exit.", "",
             "| measurement | median | range | goal | CPU s, median (range) |", "|---|---:|---:|---|---:|"]
    lines.append(f"| `import torch` | {med(plain):.3f} s | {min(plain):.3f}-{max(plain):.3f} s | | "
                 f"{med(plain_cpu):.3f} ({min(plain_cpu):.3f}-{max(plain_cpu):.3f}) |")
    verdict = "met" if med(extra) <= IMPORT_GOAL_S else "NOT met"
    cpu_verdict = "met" if med(extra_cpu) <= IMPORT_GOAL_S else "NOT met"
    lines.append(f"| `import trainer` after `import torch` | +{med(extra):.3f} s | {min(extra):.3f}-{max(extra):.3f} s "
                 f"| <= +{IMPORT_GOAL_S} s ({verdict}; in CPU time {cpu_verdict}) | +{med(extra_cpu):.3f} "
                 f"({min(extra_cpu):.3f}-{max(extra_cpu):.3f}) |")
    bars: list[tuple[str, list[float]]] = []
    if launches and all(launches.values()):
        lines += ["", "| launch | wall to first step, s | over torchrun (same script), s | goal | workers started "
                  "at, s | launcher process CPU s at that point | workers' CPU s to first step | all processes' CPU "
                  "s over torchrun |", "|---|---:|---:|---|---:|---:|---:|---:|"]
        for name, runs in launches.items():
            script = name.split(",")[0]
            base = launches[f"{script}, torchrun"]
            walls = [r.wall for r in runs]
            goal, over, over_cpu = "", "", ""
            if not name.endswith("torchrun"):
                over_s = [r.wall - b.wall for r, b in zip(runs, base)]
                over = _spread(over_s, signed=True)
                goal = f"<= +{LAUNCH_GOAL_S} s: {'met' if med(over_s) <= LAUNCH_GOAL_S else 'NOT met'}"
                over_cpu = _spread([r.total_cpu - b.total_cpu for r, b in zip(runs, base)], signed=True)
            launcher = [r.launcher_cpu for r in runs if r.launcher_cpu is not None]
            lines.append(f"| {name}: to first step | {_spread(walls)} | {over} | {goal} | "
                         f"{_spread([r.workers_start for r in runs])} | {_spread(launcher) if launcher else 'n/a'} | "
                         f"{_spread([r.workers_cpu for r in runs])} | {over_cpu} |")
            bars.append((name, [r.wall / b.wall for r, b in zip(runs, base)]))
    if failures:
        lines.append(f"\n{len(failures)} run(s) failed and ran again: " + "; ".join(failures))
    if args.import_runs < 5 or args.launch_rounds < 3:
        lines.append("\nSMOKE RUN (few runs): the numbers are not meaningful.")
    return "\n".join(lines), bars


if __name__ == "__main__":
    main()
