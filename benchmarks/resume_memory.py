"""Peak memory while resuming from a big checkpoint: this Trainer against a plain PyTorch resume.

A ~100M-parameter model (24 Linear(2048, 2048)) with Adam, one step trained and saved (~1.2 GB:
weights and two moment buffers). Each measurement is a fresh process that builds the model, then
resumes: ``Trainer.fit(ckpt_path=...)`` (the file memory-mapped, copied into the live state piece
by piece), or the plain way (``torch.load(weights_only=True)``, ``load_state_dict`` of model and
optimizer). Reported: the peak RSS during the resume (VmHWM), and the memory it took over the
process's RSS before any model was built, as a multiple of the live state (the bytes of the weights
and the Adam state that the resumed process holds).

    python benchmarks/resume_memory.py [--rounds 3] [--layers 24] [--dir /tmp/resume-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "RESUME "


def _worker(mode: str, path: str, layers: int) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, str(HERE))
    from checkpoint import Big

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    warm = Big(1)  # load the kernels' code pages (forward, backward, Adam) before the baseline is taken
    opt = warm.configure_optimizers()
    warm.training_step((torch.randn(2, 2048),), 0).backward()
    opt.step()
    del warm, opt
    base = status("VmRSS")  # the process without any model state
    model = Big(layers)
    loader = DataLoader(TensorDataset(torch.randn(4, 2048)), batch_size=2)
    if mode == "save":
        from trainer import Trainer

        trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_checkpointing=False)
        trainer.fit(model, loader)
        trainer.save_checkpoint(path)
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS starts from here
    before = status("VmRSS")
    if mode == "trainer":
        from trainer import Trainer

        trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_checkpointing=False)
        trainer.fit(model, loader, ckpt_path=path)  # restores step 1 of 1: nothing more to train
        optimizer = trainer.optimizer
    else:
        optimizer = model.configure_optimizers()
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer_states"][0])
        del ckpt
    live = sum(p.numel() * p.element_size() for p in model.parameters())
    live += sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    print(MARKER + json.dumps({"base": base, "before": before, "peak": status("VmHWM"), "after": status("VmRSS"), "live": live}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--dir", default="/tmp/resume-bench")
    p.add_argument("--results", help="also write resume_memory.md and .png in this directory")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.worker, args.path, args.layers)
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "big.ckpt")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)}

    def run(mode: str) -> dict:
        done = subprocess.run([sys.executable, __file__, "--worker", mode, "--path", path, "--layers", str(args.layers)],
                              capture_output=True, text=True, env=env, cwd=args.dir, timeout=900)
        if done.returncode:
            raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
        lines = [x for x in done.stdout.splitlines() if x.startswith(MARKER)]
        return json.loads(lines[-1][len(MARKER):]) if lines else {}

    try:
        run("save")
        size = os.path.getsize(path)
        runs: dict[str, list[dict]] = {"plain": [], "trainer": []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode].append(run(mode))
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    mb = 2**20
    lines: list[str] = []

    def emit(line: str) -> None:  # to stdout and to the results file
        lines.append(line)
        print(line)

    med = statistics.median
    emit(f"Resume from a {size / 1e9:.2f} GB checkpoint ({args.layers} x Linear(2048, 2048) + Adam state), "
          f"median of {args.rounds} alternating rounds, each a fresh process")
    emit("")
    emit("| resume | live state | peak RSS | peak over the model-less process / live state | range | "
          "after / live state |")
    emit("|---|---:|---:|---:|---:|---:|")
    for mode, label in (("plain", "plain torch.load + load_state_dict"), ("trainer", "Trainer.fit(ckpt_path=...)")):
        rs = runs[mode]
        ratios = [(r["peak"] - r["base"]) / r["live"] for r in rs]
        emit(f"| {label} | {med(r['live'] for r in rs) / mb:.0f} MB | {med(r['peak'] for r in rs) / mb:.0f} MB | "
              f"{med(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x | "
              f"{med((r['after'] - r['base']) / r['live'] for r in rs):.2f}x |")
    if args.results:
        sys.path.insert(0, str(HERE))
        from _report import write_results

        bars = [(label, [(r["peak"] - r["base"]) / r["live"] for r in runs[mode]])
                for mode, label in (("plain", "plain torch.load"), ("trainer", "Trainer.fit(ckpt_path=...)"))]
        for path_ in write_results(args.results, "resume_memory", "Peak memory during a resume", "\n".join(lines),
                                   bars, "peak RSS over the model-less process / live state"):
            print(f"wrote {path_}", file=sys.stderr)


if __name__ == "__main__":
    main()
