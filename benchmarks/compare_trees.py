"""The per-step overhead of two (or more) checkouts of this library, side by side in one run.

Each tree is measured with the same harness (this directory's ``overhead.py`` worker and
``_variants.py``), in fresh processes run by that tree's own interpreter (``TREE/.venv/bin/python``
when it exists) with that tree first on ``sys.path``. Measurements are interleaved: each round
walks the (variant, K) pairs in a shuffled order and runs every tree on that pair back to back, in
a shuffled tree order, so a burst of load from other processes hits the trees alike.

    # an old commit beside main, without a branch:
    git worktree add --detach /tmp/old 5a4f56e   # give it a .venv (see tools/mkwt.sh)
    python benchmarks/compare_trees.py --tree old=/tmp/old --tree main=. --reps 5

``--same-process`` trains every (variant, K) of a round in one process per tree (in the same
shuffled order for each tree), which saves a fresh interpreter's start-up per measurement on a
busy machine; every tree is treated alike, but the figures are then not those of overhead.py's
fresh processes. The table (and ``--json``) is rewritten after every round, so a run cut short
keeps the rounds it finished.

Reported per variant and tree (medians over rounds): µs per optimizer step (wall), CPU µs per
step (the process's CPU time in the timed window: steady when other processes share the cores),
the CPU-time ratio to the same tree's plain loop in the same round, and the CPU time relative
to the first tree's in the same round.
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
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OVERHEAD = HERE / "overhead.py"
MARKER = "BENCH_RESULT "
DEFAULT_VARIANTS = "trainer_defaults,trainer_barebones,accelerator"


def parse_tree(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--tree {text!r}: expected NAME=PATH, e.g. old=/tmp/old")
    root = Path(path).expanduser().resolve()
    if not (root / "trainer" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"--tree {text!r}: {root} holds no trainer/__init__.py; "
                                         "point it at the root of a checkout of this repository")
    return name, root


def interpreter(root: Path) -> str:
    venv = root / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def commit_of(root: Path) -> str:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() or "?") + ("+changes" if dirty else "")


def run_jobs(args: argparse.Namespace, root: Path, jobs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """One process of ``root``'s interpreter trains ``jobs`` ((variant, K) pairs) one after the other."""
    spec = ",".join(f"{variant}@{k}" for variant, k in jobs)
    cmd = [interpreter(root), str(OVERHEAD), "--worker", spec, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--tail", "2", "--chunks", "1", "--seed", str(args.seed)]
    if args.taskset:
        cmd = ["taskset", "-c", args.taskset, *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               OVERHEAD_TREE=str(root), PYTHONPATH=str(root))
    with tempfile.TemporaryDirectory(prefix="bench-cwd-") as cwd:  # stderr a pipe: progress bars stay quiet
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=args.timeout)
    results = [json.loads(ln[len(MARKER):]) for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or len(results) != len(jobs):
        raise RuntimeError(f"{root}: worker {spec} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    for result in results:
        if result["variant"] != "plain" and not str(result.get("trainer_file", "")).startswith(str(root)):
            raise RuntimeError(f"{root}: the worker imported trainer from {result.get('trainer_file')}, not this tree")
    return results


def measure(args: argparse.Namespace) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    variants = ["plain", *[v for v in args.variants.split(",") if v and v != "plain"]]
    pairs = [(v, int(k)) for k in args.accum_list.split(",") for v in variants]
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {
        (tree, v, k): [] for tree, _ in args.tree for v, k in pairs}
    rng = random.Random(args.seed)
    for rnd in range(args.reps):
        started = time.perf_counter()
        order = list(pairs)
        rng.shuffle(order)
        trees = list(args.tree)
        rng.shuffle(trees)
        if args.same_process:
            for name, root in trees:
                for (v, k), result in zip(order, run_jobs(args, root, order)):
                    runs[(name, v, k)].append(result)
        else:
            for v, k in order:
                rng.shuffle(trees)
                for name, root in trees:
                    runs[(name, v, k)].append(run_jobs(args, root, [(v, k)])[0])
        print(f"round {rnd + 1}/{args.reps} done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
              flush=True)
        report(args, runs, rnd + 1)
    return runs


def report(args: argparse.Namespace, runs: dict[tuple[str, str, int], list[dict[str, Any]]], rounds: int) -> None:
    """Write the table of the rounds so far (``--output``) and the raw measurements (``--json``)."""
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"tree": t, "variant": v, "accum": k, "runs": rs} for (t, v, k), rs in runs.items()], indent=1))
    if args.output:
        Path(args.output).write_text(render(args, runs, rounds) + "\n")


def render(args: argparse.Namespace, runs: dict[tuple[str, str, int], list[dict[str, Any]]], rounds: int) -> str:
    names = [name for name, _ in args.tree]
    base = names[0]
    trees = ", ".join(f"{name} = {root} ({commit_of(root)})" for name, root in args.tree)
    lines = [f"Trees: {trees}.", "",
             f"Tiny MLP, {args.steps} timed optimizer steps, 1 thread, median of {rounds} interleaved rounds"
             + (" (each tree's measurements of a round in one process)" if args.same_process else "") + ". "
             "CPU ratio: CPU time per step over the same tree's plain loop in the same round (range). "
             f"vs {base}: CPU time per step over {base}'s in the same round.", "",
             "| variant | K | tree | µs/step (wall) | CPU µs/step | CPU ratio to plain (range) | CPU vs " + base + " |",
             "|---|---:|---|---:|---:|---:|---:|"]
    keys = sorted({(v, k) for _, v, k in runs}, key=lambda vk: (vk[1], vk[0] != "plain", vk[0]))
    for v, k in keys:
        for name in names:
            rs, plain, ref = runs[(name, v, k)], runs[(name, "plain", k)], runs[(base, v, k)]
            ratios = [r["cpu_us_per_step"] / p["cpu_us_per_step"] for r, p in zip(rs, plain)]
            vs = [r["cpu_us_per_step"] / b["cpu_us_per_step"] for r, b in zip(rs, ref)]
            lines.append(f"| {v} | {k} | {name} | {statistics.median(r['us_per_step'] for r in rs):.1f} | "
                         f"{statistics.median(r['cpu_us_per_step'] for r in rs):.1f} | "
                         f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
                         f"{statistics.median(vs):.2f}x |")
    load = os.getloadavg()[0]
    lines += ["", f"Measured {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average {load:.1f} "
              "when it finished."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=parse_tree, action="append", required=True,
                   help="NAME=PATH of a checkout (repeat; the first is the reference)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="overhead.py variants (plain always included)")
    p.add_argument("--accum-list", default="1,4")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--taskset", help="pin every worker to these CPUs (taskset -c LIST)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--same-process", action="store_true",
                   help="one process per tree and round trains every (variant, K) of the round")
    p.add_argument("--json", help="also write the raw measurements here (after every round)")
    p.add_argument("--output", help="also write the table here (after every round)")
    args = p.parse_args(argv)
    if len({name for name, _ in args.tree}) != len(args.tree):
        p.error("--tree: give each tree a different NAME")
    if args.reps < 1 or args.steps < 1:
        p.error("--reps and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = measure(args)
    print(render(args, runs, args.reps))


if __name__ == "__main__":
    main()
