"""Where a DDP step's time goes: this Trainer against a raw PyTorch DDP loop, phase by phase.

Both train benchmarks/ddp.py's MLP (256-512-512-10, global batch 128, SGD) on 2 CPU processes
under torchrun (1 thread each, gloo). In each worker the same functions are wrapped with a clock:
fetching a batch (the DataLoader iterator), the DDP forward (the Trainer's training_step runs
inside it, so it includes the loss; the raw loop's loss is timed apart and added), backward (with
DDP's gradient all-reduce), the optimizer step, zero_grad, and the Trainer's preemption poll. The
loop's own work is the step time minus those. Rounds alternate the two; medians per phase.

    python benchmarks/ddp_phases.py [--rounds 3] [--steps 200]
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHASES = ("data", "forward + loss", "backward + all-reduce", "optimizer step", "zero_grad", "preemption poll")

WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch, torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    out, mode, steps, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), 20
    spent = {}
    clock = {"on": False}

    def timed(owner, name, phase):
        inner = getattr(owner, name)
        def wrapper(*args, **kwargs):
            if not clock["on"]:
                return inner(*args, **kwargs)
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - t
        setattr(owner, name, wrapper)

    timed(_BaseDataLoaderIter, "__next__", "data")
    timed(torch.nn.parallel.DistributedDataParallel, "forward", "forward + loss")
    timed(torch.Tensor, "backward", "backward + all-reduce")
    timed(torch.optim.SGD, "step", "optimizer step")
    timed(torch.optim.Optimizer, "zero_grad", "zero_grad")
    from trainer.loops.preemption import StopAgreement
    timed(StopAgreement, "poll", "preemption poll")

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                   torch.nn.ReLU(), torch.nn.Linear(512, 10))

    class Marks:  # start the clock after the warm-up steps, stop it after the timed ones
        def __init__(self):
            self.t0 = self.t1 = None
        def at(self, step):
            if step == warmup:
                spent.clear(); clock["on"] = True; self.t0 = time.perf_counter()
            elif step == warmup + steps:
                self.t1 = time.perf_counter(); clock["on"] = False

    marks = Marks()
    g = torch.Generator().manual_seed(0)
    n = 128 * (warmup + steps + 2)
    data = TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))
    if mode == "raw":
        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(net())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loader = DataLoader(data, batch_size=64, sampler=DistributedSampler(data, shuffle=False))
        for step, (x, y) in enumerate(loader):
            marks.at(step)
            out_ = model(x)
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(out_, y)
            if clock["on"]:
                spent["forward + loss"] = spent.get("forward + loss", 0.0) + time.perf_counter() - t
            loss.backward()
            opt.step()
            opt.zero_grad()
        rank = dist.get_rank()
        dist.destroy_process_group()
    else:
        from trainer import Trainer, TrainModule
        from trainer.callbacks import Callback

        class Net(TrainModule):
            def __init__(self):
                super().__init__()
                self.net = net()
            def training_step(self, batch, batch_idx):
                x, y = batch
                return torch.nn.functional.cross_entropy(self.net(x), y)
            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.01)

        class Clock(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                marks.at(batch_idx)

        trainer = Trainer(max_steps=warmup + steps + 1, logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, accelerator="cpu", callbacks=[Clock()])
        trainer.fit(Net(), DataLoader(data, batch_size=64))
        rank = trainer.global_rank
        agreements = trainer.fit_loop.stop_agreement.reductions
    if rank == 0:
        json.dump({"step_ms": (marks.t1 - marks.t0) * 1e3 / steps,
                   "agreements": agreements if mode != "raw" else 0, "steps": warmup + steps + 1,
                   "phases_ms": {k: v * 1e3 / steps for k, v in spent.items()}}, open(out, "w"))
""")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="ddp-phases-")
    script, out = os.path.join(tmp, "worker.py"), os.path.join(tmp, "out.json")
    Path(script).write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml"),
           "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    runs: dict[str, list[dict]] = {"raw": [], "trainer": []}
    for _ in range(args.rounds):
        for mode in ("raw", "trainer"):
            done = subprocess.run([*torchrun, script, out, mode, str(args.steps)], env=env, cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
            runs[mode].append(json.loads(Path(out).read_text()))
    med = statistics.median
    print(f"DDP step, 2 processes x 64 samples, {args.steps} timed steps, median of {args.rounds} alternating rounds "
          "(ms per step)\n")
    print("| phase | raw torch DDP | this Trainer | difference |\n|---|---:|---:|---:|")
    rows = {}
    for mode, rs in runs.items():
        rows[mode] = {ph: med(r["phases_ms"].get(ph, 0.0) for r in rs) for ph in PHASES}
        rows[mode]["step"] = med(r["step_ms"] for r in rs)
        rows[mode]["loop's own work"] = med(r["step_ms"] - sum(r["phases_ms"].values()) for r in rs)
    for ph in (*PHASES, "loop's own work", "step"):
        a, b = rows["raw"][ph], rows["trainer"][ph]
        print(f"| {ph} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    counts = [(r["agreements"], r["steps"]) for r in runs["trainer"]]
    print(f"\nPreemption agreements (gloo all-reduces) per Trainer run: {counts[0][0]} in {counts[0][1]} steps "
          f"(every round: {sorted({c for c, _ in counts})})")
    ratios = [r["step_ms"] / t["step_ms"] for r, t in zip(runs["raw"], runs["trainer"])]
    print(f"\nSpeed of this Trainer relative to raw DDP (raw step time / Trainer step time): median "
          f"{med(ratios):.3f}x, range {min(ratios):.3f}-{max(ratios):.3f}x")


if __name__ == "__main__":
    main()
