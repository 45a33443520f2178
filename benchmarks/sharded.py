"""Per-rank state bytes, step time and checkpoint save/load time: DDP, FSDP2, ZeRO-2, ZeRO-3, 2 CPU processes.

A 4.2M-parameter MLP (4 x Linear(1024, 1024)) with Adam (two moment buffers per parameter), global
batch 64, under `trainer launch --num-processes 2`. The strategies are run in alternating rounds
and the medians reported. Run: `python benchmarks/sharded.py [--rounds 3] [--steps 30]`.

`--save-stall`: how long an FSDP checkpoint holds training up, ModelCheckpoint(async_save=True)
against a synchronous save of the same state (see ``save_stall``).
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    sys.path.insert(0, {root!r})
    from trainer.callbacks import Callback
    from trainer import Trainer, TrainModule
    from trainer.persistence import trainer_checkpoint

    out, strategy, steps, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1024, 1024)

        def forward(self, x):
            return torch.relu(self.linear(x))

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(4)])

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self.blocks(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    class Clock(Callback):
        times = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.t)

    if strategy == "fsdp":
        from trainer.strategies import FSDPStrategy
        chosen = FSDPStrategy(auto_wrap_policy={{Block}})
    elif strategy.startswith("zero"):
        from trainer.strategies import DeepSpeedStrategy
        chosen = DeepSpeedStrategy(zero_stage=int(strategy[-1]))
    else:
        chosen = "ddp"
    clock = Clock()
    trainer = Trainer(max_steps=steps, strategy=chosen, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, callbacks=[clock])
    world = int(os.environ["WORLD_SIZE"])
    model = Net()
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(64 * steps, 1024)), batch_size=64 // world))

    def local_bytes(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    if strategy.startswith("zero"):
        held = trainer.strategy.local_state_bytes(model)
        params = sum(local_bytes(getattr(p, "ds_tensor", p)) for p in model.parameters())
        optim = held - params
    else:
        params = sum(local_bytes(p) for p in model.parameters())
        optim = sum(local_bytes(v) for s in trainer.optimizer.state.values() for k, v in s.items()
                    if isinstance(v, torch.Tensor) and k != "step")
    path = os.path.join(tmp, f"{{strategy}}.ckpt")
    trainer.strategy.barrier()
    t = time.perf_counter()
    trainer.save_checkpoint(path)
    save = time.perf_counter() - t
    trainer.strategy.barrier()
    t = time.perf_counter()
    found = trainer_checkpoint.load_for_resume(trainer, path)
    trainer_checkpoint.restore(trainer, found[1], found[0], lambda name, ckpt: None)  # no module or callback hooks here
    trainer.strategy.barrier()
    load = time.perf_counter() - t
    if trainer.is_global_zero:
        json.dump({{"params": params, "optim": optim, "step": sorted(clock.times[5:])[len(clock.times[5:]) // 2],
                   "save": save, "load": load}}, open(out, "w"))
""")


STALL_WORKER = textwrap.dedent("""
    import json, os, statistics, sys, time
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    sys.path.insert(0, {root!r})
    from trainer.callbacks import Callback, ModelCheckpoint
    from trainer import Trainer, TrainModule
    from trainer.strategies import FSDPStrategy

    out, tmp, events, gap, layers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    WIDTH = 2048

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            return torch.relu(self.linear(x))

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(layers)])

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self.blocks(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-4)

    def cpu():
        return time.process_time()

    # Events cycle "none", "sync", "async", each followed by `gap` plain steps: the save's stall is
    # the time the training thread spent in it; "after" is the time of the gap's steps (the async
    # write competes with them for the CPU); "waited": an async write still running after the gap.
    class Saves(Callback):
        def __init__(self):
            self.sync = ModelCheckpoint(dirpath=os.path.join(tmp, "sync"), save_top_k=1, filename="{{step}}")
            self.asyn = ModelCheckpoint(dirpath=os.path.join(tmp, "async"), save_top_k=1, filename="{{step}}",
                                        async_save=True)
            self.rows, self.kind, self.mark, self.warm = [], None, None, 3
        def setup(self, trainer, module, stage):
            for cb in (self.sync, self.asyn):
                cb.setup(trainer, module, stage)
        def teardown(self, trainer, module, stage):
            for cb in (self.sync, self.asyn):
                cb.teardown(trainer, module, stage)
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step < self.warm or (step - self.warm) % (gap + 1):
                return
            strategy = trainer.strategy
            if self.kind is not None:  # close the previous event: its gap of steps is over
                after = time.perf_counter() - self.mark
                t = time.perf_counter()
                trainer.background_writer.wait()
                waited = time.perf_counter() - t
                self.rows[-1].update(after=after, waited=waited)
            n = (step - self.warm) // (gap + 1)
            if n >= 3 * events:
                return
            self.kind = ("none", "sync", "async")[n % 3]
            strategy.barrier()  # the ranks enter together: the stall is the save's, not the other rank's lag
            t, c = time.perf_counter(), cpu()
            if self.kind == "sync":
                self.sync._save(trainer)
            elif self.kind == "async":
                self.asyn._save(trainer)
            stall = time.perf_counter() - t
            self.rows.append({{"kind": self.kind, "stall": stall, "stall_cpu": cpu() - c}})
            self.mark = time.perf_counter()

    saves = Saves()
    steps = saves.warm + 3 * events * (gap + 1) + 1
    trainer = Trainer(max_steps=steps, strategy=FSDPStrategy(auto_wrap_policy={{Block}}), accelerator="cpu",
                      logger=False, enable_progress_bar=False, enable_checkpointing=False, callbacks=[saves])
    model = Net()
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8 * steps, WIDTH)), batch_size=4))
    local = trainer.strategy.local_state_bytes(model, trainer.optimizer)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if trainer.is_global_zero:
        json.dump({{"rows": saves.rows, "local_state": local, "model_bytes": total}}, open(out, "w"))
""")


def save_stall(rounds: int, events: int, gap: int, layers: int, results: str | None) -> None:
    """FSDP on 2 CPU processes, a model of ``layers`` x Linear(2048, 2048) with Adam: the training
    thread's hold-up by a synchronous sharded save and by ModelCheckpoint(async_save=True) of the
    same state, alternating within each run, rounds in separate launches; medians."""
    tmp = tempfile.mkdtemp(prefix="save-stall-")
    script = os.path.join(tmp, "worker.py")
    open(script, "w").write(STALL_WORKER.format(root=ROOT))
    env = {**os.environ, "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml")}
    runs = []
    for r in range(rounds):
        out = os.path.join(tmp, f"stall{r}.json")
        done = subprocess.run([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--cpu", script,
                               out, os.path.join(tmp, f"ckpt{r}"), str(events), str(gap), str(layers)], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"save-stall round {r} failed ({done.returncode}):\n{done.stderr[-6000:]}")
        runs.append(json.load(open(out)))
    med = statistics.median
    rows = [row for run in runs for row in run["rows"]]

    def of(kind: str, key: str) -> float:
        return med(row[key] for row in rows if row["kind"] == kind)

    base_after = of("none", "after")
    # per round: the async stall over the sync stall of the same run (pairs in the same conditions)
    ratios = [med(x["stall"] for x in run["rows"] if x["kind"] == "async")
              / med(x["stall"] for x in run["rows"] if x["kind"] == "sync") for run in runs]
    cost = {k: of(k, "stall") + of(k, "after") - base_after + of(k, "waited") for k in ("sync", "async")}
    cost_ratios = [(med(x["stall"] + x["after"] + x["waited"] for x in run["rows"] if x["kind"] == "async")
                    - med(x["after"] for x in run["rows"] if x["kind"] == "none"))
                   / (med(x["stall"] + x["after"] + x["waited"] for x in run["rows"] if x["kind"] == "sync")
                      - med(x["after"] for x in run["rows"] if x["kind"] == "none")) for run in runs]
    mb = 1e6
    lines = [f"FSDP2 on 2 CPU processes (gloo), {layers} x Linear(2048, 2048) with Adam: "
             f"{runs[0]['model_bytes'] / mb:.0f} MB of weights, {runs[0]['local_state'] / mb:.0f} MB of weights and "
             f"optimizer state per rank. {rounds} runs x {events} saves of each kind, alternating, {gap} training "
             "steps after each; medians.", "",
             "| save | training thread held (wall) | CPU time of the training thread | ratio to sync | "
             f"the {gap} steps after it | still writing after them |",
             "|---|---:|---:|---:|---:|---:|",
             f"| none | - | - | - | {base_after:.2f} s | - |"]
    for kind, label in (("sync", "synchronous"), ("async", "async_save=True")):
        lines.append(f"| {label} | {of(kind, 'stall'):.3f} s | {of(kind, 'stall_cpu'):.3f} s | "
                     f"{of(kind, 'stall') / of('sync', 'stall'):.2f}x | {of(kind, 'after'):.2f} s | "
                     f"{of(kind, 'waited'):.2f} s |")
    lines += ["", f"Stall of an async save over a synchronous one, per run: median {med(ratios):.2f}x, range "
              f"{min(ratios):.2f}-{max(ratios):.2f}x (goal <= 0.25x). Counting also what the background write "
              f"takes from the {gap} steps after it (both ranks and their writers share the cores): {cost['async']:.2f} s "
              f"against {cost['sync']:.2f} s over all runs ({cost['async'] / cost['sync']:.2f}x); per run "
              f"{min(cost_ratios):.2f}-{max(cost_ratios):.2f}x, median {med(cost_ratios):.2f}x (the step windows "
              f"themselves vary by about a save's cost on a loaded machine).",
              f"The async snapshot is a CPU copy of the rank's shards, {runs[0]['local_state'] / mb:.0f} MB per rank "
              "(weights and Adam state), held until its write is done (at most one at a time: a save first waits "
              "for the previous write)."]
    table = "\n".join(lines)
    print(table)
    if results:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _report import write_results

        bars = [("synchronous sharded save", [1.0] * len(ratios)), ("async_save=True: training thread held", ratios),
                ("async_save=True: incl. the steps it slows", cost_ratios)]
        for path in write_results(results, "sharded_save", "FSDP checkpoint: training stall, async vs synchronous",
                                  table, bars, "stall / stall of a synchronous save"):
            print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-stall", action="store_true", help="only the FSDP async-save stall benchmark")
    parser.add_argument("--events", type=int, default=2, help="--save-stall: saves of each kind per run")
    parser.add_argument("--gap", type=int, default=5, help="--save-stall: training steps after each save")
    parser.add_argument("--layers", type=int, default=8, help="--save-stall: Linear(2048, 2048) layers")
    parser.add_argument("--results", help="--save-stall: also write sharded_save.md and .png in this directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--deepspeed", action=argparse.BooleanOptionalAction, default=True,
                        help="also ZeRO-2 and ZeRO-3 (needs deepspeed)")
    parser.add_argument("--strategies", default=None,
                        help="comma-separated subset of ddp,fsdp,zero2,zero3 (default: all that --deepspeed allows)")
    args = parser.parse_args()
    if args.save_stall:
        save_stall(args.rounds, args.events, args.gap, args.layers, args.results)
        return
    tmp = tempfile.mkdtemp()
    script = os.path.join(tmp, "worker.py")
    open(script, "w").write(WORKER.format(root=ROOT))
    env = {**os.environ, "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml")}
    strategies = ["ddp", "fsdp"] + (["zero2", "zero3"] if args.deepspeed else [])
    if args.strategies:
        chosen = args.strategies.split(",")
        unknown = sorted(set(chosen) - {"ddp", "fsdp", "zero2", "zero3"})
        if unknown:
            parser.error(f"--strategies {args.strategies}: unknown {unknown}; expected names from ddp,fsdp,zero2,zero3")
        strategies = chosen
    results: dict[str, list[dict]] = {name: [] for name in strategies}
    for _ in range(args.rounds):
        for strategy in results:
            out = os.path.join(tmp, f"{strategy}.json")
            done = subprocess.run([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--cpu",
                                   script, out, strategy, str(args.steps), tmp], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{strategy} failed ({done.returncode}):\n{done.stderr[-6000:]}")
            results[strategy].append(json.load(open(out)))
    mb = 1024 * 1024
    print(f"4.2M-parameter MLP, Adam, global batch 64, 2 CPU processes (gloo), median of {args.rounds} rounds")
    print(f"{'strategy':<10}{'params/rank':>13}{'optim/rank':>12}{'step':>10}{'save':>9}{'load':>9}")
    for strategy, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{strategy.upper():<10}{med['params'] / mb:>10.1f} MB{med['optim'] / mb:>9.1f} MB"
              f"{med['step'] * 1e3:>8.1f}ms{med['save']:>8.2f}s{med['load']:>8.2f}s")


if __name__ == "__main__":
    main()
