"""Per-rank state bytes, step time and checkpoint save/load time: DDP, FSDP2, ZeRO-2, ZeRO-3, 2 CPU processes.

A 4.2M-parameter MLP (4 x Linear(1024, 1024)) with Adam (two moment buffers per parameter), global
batch 64, under `trainer launch --num-processes 2`. The strategies are run in alternating rounds
and the medians reported. Run: `python benchmarks/sharded.py [--rounds 3] [--steps 30]`.
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
    from trainer import checkpoint

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
    found = checkpoint.load_for_resume(trainer, path)
    checkpoint.restore(trainer, found[1], found[0])
    trainer.strategy.barrier()
    load = time.perf_counter() - t
    if trainer.is_global_zero:
        json.dump({{"params": params, "optim": optim, "step": sorted(clock.times[5:])[len(clock.times[5:]) // 2],
                   "save": save, "load": load}}, open(out, "w"))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--deepspeed", action=argparse.BooleanOptionalAction, default=True,
                        help="also ZeRO-2 and ZeRO-3 (needs deepspeed)")
    parser.add_argument("--strategies", default=None,
                        help="comma-separated subset of ddp,fsdp,zero2,zero3 (default: all that --deepspeed allows)")
    args = parser.parse_args()
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
