"""The step's cost with each logger on against logging off, on the demo's model, side by side.

The demo's character transformer (examples/char_transformer.py, its default size: 2 blocks, d_model
128, context 64, batch 32) trains in this one process, fit after fit: logging off (``logger=False``),
then with each logger -- CSV, TensorBoard, W&B offline, MLflow (a local file store) -- at the
Trainer's default ``log_every_n_steps`` (50), ``self.log`` of the loss every step as the demo does.
The variants take turns within each round (the order rotates every round), so a load that drifts
weighs on all alike. A fit's cost per step is the median over its timed chunks of ``--chunk`` steps
(each chunk of 50 holds exactly one log interval: its read-back and its row); each round's ratio is
that over logging off's in the same round. Three clocks: the training thread's CPU time (the step's
cost on the training thread, what this benchmark is for, and steady under load), the process's CPU
time (the writer threads' work included) and wall time (what a user waits; on a shared machine it
moves by more than the differences measured here, so read it with the load printed beside it).
The wall and CPU clocks cannot resolve 1% on a loaded machine, so each fit also times, on the
training thread, every call the loop makes into the logger (``enqueue_metrics``: the queueing, or
with ``--sync`` the write itself) and reports it per log call and as a share of the step's time.
Each variant first runs one short untimed fit, so a tracker's run is open (W&B's start takes seconds,
in its own service process) before the rounds. The loggers write on their background writer threads;
``--sync`` adds each logger written on the training thread (as before the writer threads), to show
what they save.

    python benchmarks/logger_cost.py [--rounds 5] [--chunks 4] [--loggers csv,tensorboard,wandb,mlflow]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "examples"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the demo sets it
os.environ.setdefault("WANDB_SILENT", "true")

KINDS = ("csv", "tensorboard", "wandb", "mlflow")


def _make_logger(kind: str, root: str) -> Any:
    from trainer.callbacks import CSVLogger, MLflowLogger, TensorBoardLogger, WandbLogger

    if kind == "csv":
        return CSVLogger(root, name="csv")
    if kind == "tensorboard":
        return TensorBoardLogger(root, name="tensorboard")
    if kind == "wandb":
        return WandbLogger(project="bench", save_dir=root, offline=True)
    if kind == "mlflow":
        return MLflowLogger(experiment_name="bench", save_dir=root)
    raise SystemExit(f"--loggers: unknown logger {kind!r}; expected some of {', '.join(KINDS)}.")


def _on_training_thread(logger: Any) -> Any:
    """The logger written on the training thread: its queue calls run in place (the old behaviour)."""
    logger.enqueue_metrics = lambda metrics, step: logger.log_metrics(metrics=dict(metrics), step=step)
    logger.enqueue_hyperparams = logger.log_hyperparams
    return logger


class _Setup:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        from torch.utils.data import DataLoader, RandomSampler

        import char_transformer as demo

        torch.set_num_threads(args.threads)
        defaults = demo.parse_args([])
        text = demo.load_stdlib_text(defaults.limit_chars)
        vocab = sorted(set(text))
        to_id = {ch: i for i, ch in enumerate(vocab)}
        data = torch.tensor([to_id[ch] for ch in text], dtype=torch.long)
        self.steps = args.warmup + args.chunks * args.chunk
        windows = demo.CharWindows(data, defaults.block_size)
        generator = torch.Generator().manual_seed(0)
        sampler = RandomSampler(windows, replacement=True, num_samples=self.steps * defaults.batch_size,
                                generator=generator)
        self.loader = DataLoader(windows, batch_size=defaults.batch_size, sampler=sampler)
        self.make_model = lambda: demo.CharTransformer(len(vocab), block_size=defaults.block_size,
                                                       n_layer=defaults.n_layer, n_head=defaults.n_head,
                                                       d_model=defaults.d_model, lr=defaults.lr,
                                                       max_steps=self.steps)
        self.args = args


def _fit(setup: _Setup, logger: Any, steps: int | None = None) -> dict[str, Any]:
    import torch

    from trainer import Trainer
    from trainer.callbacks import Callback

    args = setup.args
    marks: list[tuple[float, float, float]] = []

    def mark() -> None:
        marks.append((time.thread_time(), time.process_time(), time.perf_counter()))

    class Clock(Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            step = trainer.global_step
            if step >= args.warmup and (step - args.warmup) % args.chunk == 0:
                mark()

        def on_train_end(self, trainer: Any, module: Any) -> None:
            mark()

    in_logger: list[float] = []  # seconds the training thread spent in each call into the logger
    if logger is not None:
        enqueue = logger.enqueue_metrics

        def timed(metrics: Any, step: int) -> None:
            start = time.perf_counter()
            try:
                enqueue(metrics, step)
            finally:
                in_logger.append(time.perf_counter() - start)

        logger.enqueue_metrics = timed
    torch.manual_seed(0)
    trainer = Trainer(max_steps=steps or setup.steps, logger=logger if logger is not None else False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      log_every_n_steps=args.log_every_n_steps, accelerator="cpu", callbacks=[Clock()])
    try:
        trainer.fit(setup.make_model(), setup.loader)
    finally:
        if logger is not None:
            logger.enqueue_metrics = enqueue
    out: dict[str, Any] = {"rows": len(in_logger), "logger_call_us": [1e6 * t for t in in_logger],
                           "steps": steps or setup.steps}
    for i, clock in enumerate(CLOCKS):
        chunk_ms = [1e3 * (b[i] - a[i]) / args.chunk for a, b in zip(marks, marks[1:])]
        out[f"{clock}_chunks"] = chunk_ms
        out[clock] = statistics.median(chunk_ms) if chunk_ms else float("nan")
    return out


CLOCKS = ("training_thread_cpu", "process_cpu", "wall")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of each fit")
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks per fit")
    parser.add_argument("--chunk", type=int, default=50, help="steps per chunk (50: one log interval each)")
    parser.add_argument("--log-every-n-steps", type=int, default=50, help="the Trainer's (50 is its default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--loggers", default=",".join(KINDS))
    parser.add_argument("--sync", action="store_true", help="also each logger written on the training thread")
    parser.add_argument("--json", help="write every fit's numbers here")
    args = parser.parse_args(argv)
    kinds = [k for k in args.loggers.split(",") if k]
    from trainer.callbacks.trackers import installed

    missing = [k for k in kinds if k not in KINDS or not installed(k)]
    if missing:
        raise SystemExit(f"--loggers {args.loggers}: {missing} unknown or not installed; expected some of "
                         f"{', '.join(KINDS)} (pip install 'trainer[{missing[0]}]' for a missing one).")
    setup = _Setup(args)
    root = tempfile.mkdtemp(prefix="bench-loggers-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", "file:" + os.path.join(root, "mlruns"))
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    variants: dict[str, Any] = {"logging off": None}
    for kind in kinds:
        variants[f"{kind}, writer thread"] = _make_logger(kind, root)
    if args.sync:
        for kind in kinds:
            variants[f"{kind}, training thread"] = _on_training_thread(_make_logger(kind, os.path.join(root, "sync")))
    names = list(variants)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    loads = [os.getloadavg()[0]]
    for logger in variants.values():  # warm-up fits: first-call paths, the allocator, each tracker's run opened
        _fit(setup, logger, steps=args.warmup)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            results[name].append(_fit(setup, variants[name]))
        loads.append(os.getloadavg()[0])
        base = results["logging off"][-1]
        line = "  ".join(f"{n.split(',')[0] if ', writer' in n else n}: "
                         f"{results[n][-1]['training_thread_cpu'] / base['training_thread_cpu']:.3f}x"
                         f" (wall {results[n][-1]['wall'] / base['wall']:.3f}x)" for n in names[1:])
        print(f"round {r + 1}/{args.rounds} (off: {base['training_thread_cpu']:.1f} ms/step CPU, {base['wall']:.1f} "
              f"wall; load {loads[-1]:.1f}): {line}", file=sys.stderr, flush=True)
    for logger in variants.values():
        if logger is not None and hasattr(logger, "close"):
            logger.close()
    print(_table(args, setup, results, loads))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "loads": loads, "results": results}, f, indent=1)


def _table(args: argparse.Namespace, setup: _Setup, results: dict[str, list[dict[str, Any]]],
           loads: list[float]) -> str:
    off = results["logging off"]
    lines = [f"The demo's char transformer, {setup.steps} steps per fit ({args.warmup} untimed, then {args.chunks} "
             f"chunks of {args.chunk}; a fit's cost is its median chunk), log_every_n_steps={args.log_every_n_steps} "
             f"{'(the default)' if args.log_every_n_steps == 50 else '(not the default 50)'}, "
             f"{args.threads} torch thread(s), {args.rounds} rounds (order rotated each round); ratio: ms per step "
             f"over logging off's in the same round. Load average (1 min) during the rounds: {min(loads):.1f}-"
             f"{max(loads):.1f}.", "",
             "| variant | training-thread CPU ms/step | ratio to logging off, each round | median | highest "
             "| process CPU, median ratio | wall, median ratio | rows logged per fit | training thread in the logger, "
             "µs per row (median) | its share of a step |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runs in results.items():
        ms = statistics.median(r["training_thread_cpu"] for r in runs)
        if name == "logging off":
            lines.append(f"| {name} | {ms:.2f} | (reference) | 1.000x | | 1.000x | 1.000x | 0 | | |")
            continue
        ratio = {c: [r[c] / o[c] for r, o in zip(runs, off)] for c in CLOCKS}
        cpu = ratio["training_thread_cpu"]
        calls = [t for r in runs for t in r["logger_call_us"]]
        per_row = statistics.median(calls) if calls else float("nan")
        step_us = 1e3 * statistics.median(r["wall"] for r in off)
        share = 100 * sum(calls) / len(runs) / runs[0]["steps"] / step_us  # per step, over a step's wall time
        lines.append(f"| {name} | {ms:.2f} | {' '.join(f'{x:.3f}' for x in cpu)} | {statistics.median(cpu):.3f}x "
                     f"| {max(cpu):.3f}x | {statistics.median(ratio['process_cpu']):.3f}x "
                     f"| {statistics.median(ratio['wall']):.3f}x | {runs[0]['rows']} | {per_row:.1f} | {share:.4f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
