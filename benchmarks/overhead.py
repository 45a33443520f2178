"""How much a training step costs through this framework, compared with a plain PyTorch loop.

Trains the same tiny MLP (32 -> 64 -> 1, batch 32, SGD, one thread) with a plain loop, the
Trainer (with its defaults, and barebones), the Accelerator door, and, when they are
installed (the ``bench`` extra), Lightning's Trainer and Fabric and HF Accelerate; each
without and with gradient accumulation 4. Also times ``import trainer`` over ``import torch``.

    python benchmarks/overhead.py              # full run: 2000 optimizer steps, 5 rounds
                                               # (~4 min; ~12 min with lightning and accelerate)
    python benchmarks/overhead.py --quick      # smoke run (~10 s; the numbers mean nothing)
    pip install -e ".[bench]"                  # to compare with Lightning, Fabric and Accelerate

Method:
- Every measurement is a fresh process (``--worker NAME --accum K``), one thread
  (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``). Variants run one at a time, round
  robin, in a shuffled order each round; import timings are interleaved with the rounds.
- Data: one fixed random tensor, cut into micro-batches of 32 before the clock starts and
  served by ``DataLoader(dataset, batch_size=None)`` (``--data samples`` instead uses
  ``DataLoader(batch_size=32)`` over samples, which adds the per-sample collate cost to
  every variant alike). The same loader is handed to every variant.
- With accumulation K, a step is one optimizer step = K micro-batches: the timed window is
  always ``--steps`` optimizer steps (2000 steps = 8000 micro-batches at K=4).
- Only the steady-state loop is timed: the dataset notes the time when the first timed
  micro-batch and the one after the last are fetched (see ``_variants.py``), after
  ``--warmup`` optimizer steps; set-up, tear-down and the end of the epoch are not timed.
- Reported: medians over rounds of µs per optimizer step and per micro-batch, and the
  median over rounds of the ratio to the plain loop with the same K measured in that round;
  also the fastest round of each and the ratio of those. Other processes only ever add time,
  so on a busy machine the fastest round is the steadier estimate (the goals are checked on it).
- Import: fresh interpreters (bytecode cache warm, as an installed package has it) time
  ``import torch`` and then ``import trainer`` (or a peer) after it, interleaved; medians.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
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
# The tree whose `trainer` a worker imports: this one, or another checkout when compare_trees.py
# measures two commits with the same harness (it sets OVERHEAD_TREE for its workers).
ROOT = Path(os.environ.get("OVERHEAD_TREE") or HERE.parent).resolve()
for path in (str(ROOT), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

MARKER = "BENCH_RESULT "
IMPORTS = ("trainer", "lightning", "accelerate")  # each timed after torch; peers only when installed
IMPORT_SNIPPET = (
    "import time, json; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); {stmt}"
    "t2 = time.perf_counter(); print('" + MARKER + "' + json.dumps([t1 - t0, t2 - t1]))"
)
GOALS = {"trainer_barebones": 1.05, "trainer_defaults": 1.10}
IMPORT_GOAL_S = 0.1


# -- worker ------------------------------------------------------------------------------------
def run_worker(args: argparse.Namespace) -> None:
    """Train ``--worker NAME`` with ``--accum K`` and print one result line. ``NAME@K,NAME@K,...``
    trains several one after the other in this process (smoke runs only)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from _variants import VARIANTS, Plan, checksum

    torch.set_num_threads(1)
    for item in args.worker.split(","):
        name, _, k = item.partition("@")
        plan = Plan(accum=int(k) if k else args.accum, steps=args.steps, warmup=args.warmup, tail=args.tail,
                    chunks=args.chunks, data=args.data, seed=args.seed)
        loader, dataset = plan.build_loader()
        variant = VARIANTS[name]
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            start = time.perf_counter()
            model, steps = variant.run(plan, loader, tmp)
            total = time.perf_counter() - start
        trainer_mod = sys.modules.get("trainer")
        result = {"variant": variant.name, "accum": plan.accum, "steps": plan.steps, "optimizer_steps": int(steps),
                  "expected_steps": plan.total_steps, "total_s": total, "checksum": checksum(model),
                  "threads": torch.get_num_threads(), "trainer_file": getattr(trainer_mod, "__file__", None),
                  **plan.timing(dataset)}
        print(MARKER + json.dumps(result), flush=True)


def _parse_markers(stdout: str) -> list[Any]:
    return [json.loads(line[len(MARKER):]) for line in stdout.splitlines() if line.startswith(MARKER)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # Let Python cache bytecode, as an installed package has it: imports are timed from the cache.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def launch_worker(args: argparse.Namespace, jobs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """One fresh process trains ``jobs`` ((variant, accumulation) pairs; normally exactly one)."""
    spec = ",".join(f"{name}@{k}" for name, k in jobs)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", spec,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--tail", str(args.tail),
           "--chunks", str(args.chunks), "--data", args.data, "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="bench-cwd-") as cwd:
        # stderr is a pipe, as in CI or a log file: progress bars that check isatty() stay quiet.
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_child_env(),
                              timeout=args.timeout)
    results = _parse_markers(proc.stdout)
    if proc.returncode != 0 or len(results) != len(jobs):
        raise RuntimeError(f"worker {spec} failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return results


def time_import(module: str | None, timeout: float) -> dict[str, float]:
    """One fresh interpreter: seconds for ``import torch``, then for ``import module`` after it,
    and the whole process's wall time."""
    stmt = f"import {module}; " if module else ""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", IMPORT_SNIPPET.format(stmt=stmt)], capture_output=True,
                          text=True, cwd=str(ROOT), env=_child_env(), timeout=timeout)
    wall = time.perf_counter() - start
    results = _parse_markers(proc.stdout)
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"timing `import {module}` failed:\n{proc.stderr[-3000:]}")
    return {"torch_s": results[0][0], "extra_s": results[0][1], "wall_s": wall}


# -- driver ------------------------------------------------------------------------------------
def available(requires: str | None) -> bool:
    return requires is None or importlib.util.find_spec(requires) is not None


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from _variants import VARIANTS

    wanted = args.variants.split(",") if args.variants else [n for n, v in VARIANTS.items() if not v.optional]
    unknown = [w for w in wanted if w not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if "plain" not in wanted:
        wanted.insert(0, "plain")
    skipped = [w for w in wanted if not available(VARIANTS[w].requires)]
    names = [w for w in wanted if w not in skipped]
    accums = [int(a) for a in args.accum_list.split(",")]
    jobs = [(name, k) for k in accums for name in names]
    imports = [None, *(m for m in IMPORTS if available(m))] if args.import_reps else []

    rng = random.Random(args.seed)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {job: [] for job in jobs}
    import_runs: dict[str | None, list[dict[str, float]]] = {m: [] for m in imports}
    log = sys.stderr
    print(f"{len(jobs)} measurements x {args.reps} rounds; {args.steps} timed optimizer steps each "
          f"(warm-up {args.warmup}); data={args.data}; jobs={args.jobs}"
          + ("; ALL IN ONE PROCESS (smoke run)" if args.same_process else "")
          + (f"; not installed, skipped: {', '.join(skipped)}" if skipped else ""), file=log, flush=True)
    if not args.quick:
        for module in imports:  # untimed: fill the bytecode and file caches once
            time_import(module, args.timeout)
    rounds = max(args.reps, args.import_reps)
    for rnd in range(rounds):
        started = time.perf_counter()
        tasks: list[tuple[str, Any]] = []
        if rnd < args.reps:
            order = list(jobs)
            rng.shuffle(order)
            if args.same_process:  # smoke run: every measurement in one process
                tasks.append(("train", order))
            else:
                tasks += [("train", [job]) for job in order]
        if rnd < args.import_reps:
            order_imports = list(imports)
            rng.shuffle(order_imports)
            tasks += [("import", module) for module in order_imports]

        def run_task(task: tuple[str, Any]) -> Any:
            kind, what = task
            return launch_worker(args, what) if kind == "train" else time_import(what, args.timeout)

        if args.jobs > 1:  # smoke runs only: concurrent processes disturb each other's timing
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
                outputs = list(pool.map(run_task, tasks))
        else:
            outputs = [run_task(task) for task in tasks]
        for (kind, what), output in zip(tasks, outputs):
            if kind == "train":
                for job, result in zip(what, output):
                    runs[job].append(result)
            else:
                import_runs[what].append(output)
        print(f"round {rnd + 1}/{rounds} done in {time.perf_counter() - started:.1f} s", file=log, flush=True)
    return {"runs": runs, "imports": import_runs, "skipped": skipped, "names": names, "accums": accums}


def summarize(bench: dict[str, Any]) -> list[dict[str, Any]]:
    from _variants import VARIANTS

    rows = []
    for k in bench["accums"]:
        plain = bench["runs"][("plain", k)]
        for name in bench["names"]:
            runs = bench["runs"][(name, k)]
            ratios = [r["us_per_step"] / p["us_per_step"] for r, p in zip(runs, plain)]
            cpu_ratios = [r["cpu_us_per_step"] / p["cpu_us_per_step"] for r, p in zip(runs, plain)]
            checks = [abs(r["checksum"] - p["checksum"]) / max(abs(p["checksum"]), 1e-12)
                      for r, p in zip(runs, plain)]
            variant = VARIANTS[name]
            best, best_plain = min(r["us_per_step"] for r in runs), min(p["us_per_step"] for p in plain)
            rows.append({
                "name": name, "accum": k, "label": variant.label + (f", accum {k}" if k > 1 else ""),
                "us_per_step": statistics.median(r["us_per_step"] for r in runs),
                "us_per_micro": statistics.median(r["us_per_micro"] for r in runs),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios), "ratios": ratios,
                "best_us_per_step": best, "best_ratio": best / best_plain,
                "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratio_min": min(cpu_ratios),
                "cpu_ratio_max": max(cpu_ratios), "cpu_ratios": cpu_ratios,
                "chunk_us_per_step": statistics.median(statistics.median(r["chunk_us_per_step"]) for r in runs),
                "total_s": statistics.median(r["total_s"] for r in runs),
                "steps_ok": all(r["optimizer_steps"] == r["expected_steps"] for r in runs),
                "weights_rel_diff": max(checks), "note": _note(variant, k),
            })
    return rows


def _note(variant: Any, k: int) -> str:
    note = variant.note
    if "(accum 4:" in note:  # "reference 2.4x (accum 4: 2.8x)" -> the figure for this K
        base, acc = note.split(" (accum 4: ")
        return f"reference {acc.rstrip(')')}" if k == 4 else base
    return note


def import_summary(bench: dict[str, Any]) -> list[dict[str, Any]]:
    runs = bench["imports"]
    if not runs or not runs.get(None):
        return []
    base = runs[None]
    out = [{"what": "import torch", "seconds": statistics.median(r["torch_s"] for r in base),
            "over_torch": None, "wall_s": statistics.median(r["wall_s"] for r in base)}]
    for module, rs in runs.items():
        if module is None:
            continue
        extra = statistics.median(r["extra_s"] for r in rs)
        out.append({"what": f"import torch, {module}", "seconds": out[0]["seconds"] + extra, "over_torch": extra,
                    "wall_s": statistics.median(r["wall_s"] for r in rs)})
    return out


def render(rows: list[dict[str, Any]], imports: list[dict[str, Any]], args: argparse.Namespace,
           bench: dict[str, Any]) -> str:
    lines = [f"Overhead over a plain PyTorch loop: tiny MLP 32->64->1, batch 32, SGD, 1 thread, "
             f"{args.steps} timed optimizer steps, median of {args.reps} interleaved rounds "
             f"(data: {'pre-built batches' if args.data == 'prebuilt' else 'DataLoader(batch_size=32)'}).",
             "",
             "| variant | µs/step | µs/micro-batch | ratio to plain | ratio range | best µs/step | best ratio | "
             "CPU-time ratio (range) | note |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        goal = GOALS.get(r["name"])
        verdict = "" if goal is None else (" (met)" if r["best_ratio"] <= goal else " (NOT met)")
        lines.append(f"| {r['label']} | {r['us_per_step']:.1f} | {r['us_per_micro']:.1f} | {r['ratio']:.2f}x | "
                     f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}x | {r['best_us_per_step']:.1f} | "
                     f"{r['best_ratio']:.2f}x | {r['cpu_ratio']:.2f}x ({r['cpu_ratio_min']:.2f}-"
                     f"{r['cpu_ratio_max']:.2f}x) | {r['note']}{verdict} |")
    if imports:
        lines += ["", "| import | seconds | over `import torch` | note |", "|---|---:|---:|---|"]
        for r in imports:
            over = "" if r["over_torch"] is None else f"+{r['over_torch']:.3f} s"
            note = ""
            if r["what"] == "import torch, trainer":
                note = f"goal < {IMPORT_GOAL_S} s" + (" (met)" if r["over_torch"] < IMPORT_GOAL_S else " (NOT met)")
            elif r["what"] == "import torch, lightning":
                note = "reference +1.3 s"
            elif r["what"] == "import torch, accelerate":
                note = "reference +0.02 s"
            lines.append(f"| `{r['what']}` | {r['seconds']:.3f} | {over} | {note} |")
    notes = ["", "Notes:",
             "- µs/step: median over rounds; one step is one optimizer step (K micro-batches with accumulation K). "
             "Ratio to plain: median over rounds of (variant / plain loop with the same K in the same round), and "
             "its range. Best: the fastest round of each (noise on a shared machine only adds time, so on a busy "
             "machine 'best ratio' is the steadier estimate; the goals are checked against it). CPU-time ratio: "
             "the same over the process's CPU time in the timed window (one thread: time spent waiting for a "
             "core does not count), median over rounds and range; the chart shows it.",
             "- Trainer, defaults: the default logger (TensorBoard when installed, else CSV), ModelCheckpoint (at the "
             "epoch end), model summary and progress bar on, `self.log` of the loss every step, "
             "log_every_n_steps=50. The worker's stderr is a pipe, so the default ProgressBar is quiet "
             "(it only draws on a terminal); the `ProgressBar(force=True)` row draws it.",
             "- Trainer, barebones: enable_progress_bar=False, logger=False, enable_checkpointing=False, "
             "num_sanity_val_steps=0; `training_step` returns the loss and does not call `self.log`."]
    notes.append("- Import: medians over fresh interpreters with the bytecode cache warm; `import torch` is "
                 "timed alone, each package after it in the same process.")
    if args.same_process or args.jobs > 1 or args.reps < 3:
        notes.append("- SMOKE RUN (--quick, --same-process, --jobs > 1 or fewer than 3 rounds): the numbers are not "
                     "meaningful.")
    if bench["skipped"]:
        notes.append(f"- Not installed, not measured: {', '.join(bench['skipped'])} "
                     "(`pip install -e .[bench]`).")
    spread = max((r["ratio_max"] / r["ratio_min"] for r in rows if r["name"] != "plain"), default=1.0)
    if spread > 1.3:
        notes.append(f"- The machine was busy during this run: a variant's ratio to plain varied by up to "
                     f"{spread:.2f}x between rounds. Differences of ~10% are within noise; rerun on an idle "
                     "machine (or with more --reps) before relying on them.")
    bad = [r for r in rows if not r["steps_ok"] or r["weights_rel_diff"] > 1e-3]
    for r in bad:
        notes.append(f"- WARNING {r['label']}: optimizer steps ok={r['steps_ok']}, final weights differ from the "
                     f"plain loop's by {r['weights_rel_diff']:.2e} (relative).")
    return "\n".join(lines + notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, one round")
    p.add_argument("--steps", type=int, help="timed optimizer steps per run (default 2000; --quick 100)")
    p.add_argument("--warmup", type=int, help="optimizer steps before the clock starts (default 50; --quick 5)")
    p.add_argument("--tail", type=int, default=2, help="optimizer steps after the timed window")
    p.add_argument("--reps", type=int, help="interleaved rounds (default 5; --quick 1)")
    p.add_argument("--import-reps", type=int, help="rounds of import timing (default 5; --quick 1; 0: none)")
    p.add_argument("--chunks", type=int, default=10, help="also time the window in this many chunks")
    p.add_argument("--accum-list", default="1,4", help="accumulation settings to measure (default 1,4)")
    p.add_argument("--variants", default="", help="comma-separated subset (plain is always included)")
    p.add_argument("--data", choices=("prebuilt", "samples"), default="prebuilt")
    p.add_argument("--jobs", type=int, default=1, help="workers at once (>1 only for smoke runs: it skews timing)")
    p.add_argument("--same-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run every measurement of a round in one worker process "
                        "(smoke runs only; default: on with --quick, else off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per worker process")
    p.add_argument("--json", help="also write the raw measurements here")
    p.add_argument("--results", help="also write overhead.md and overhead.png (ratio bars) in this directory")
    p.add_argument("--worker", help="internal: train one variant (NAME, or NAME@K,...) and print JSON")
    p.add_argument("--accum", type=int, default=1, help="with --worker: micro-batches per optimizer step")
    args = p.parse_args(argv)
    quick = args.quick
    args.steps = args.steps if args.steps is not None else (100 if quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (5 if quick else 50)
    args.reps = args.reps if args.reps is not None else (1 if quick else 5)
    args.import_reps = args.import_reps if args.import_reps is not None else (1 if quick else 5)
    args.same_process = quick if args.same_process is None else args.same_process
    if args.steps < 1 or args.reps < 1 or args.warmup < 0 or args.tail < 1 or args.jobs < 1:
        p.error("--steps, --reps, --tail and --jobs must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    bench = run_benchmark(args)
    rows, imports = summarize(bench), import_summary(bench)
    if args.json:
        raw = {"args": vars(args), "rows": rows, "imports": imports,
               "runs": [{"variant": n, "accum": k, "runs": rs} for (n, k), rs in bench["runs"].items()],
               "import_runs": {str(m): rs for m, rs in bench["imports"].items()}}
        Path(args.json).write_text(json.dumps(raw, indent=1))
    table = render(rows, imports, args, bench)
    print(table)
    if args.results:
        from _report import write_results

        bars = [(r["label"], r["cpu_ratios"]) for r in rows]
        for path in write_results(args.results, "overhead", "Per-step overhead on a tiny MLP (1 thread)", table, bars,
                                  "CPU time per optimizer step / plain PyTorch loop"):
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
