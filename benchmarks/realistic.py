"""Real workloads through each loop: samples/s and peak memory against a plain PyTorch loop.

Two workloads, each trained for a fixed number of optimizer steps from the same weights, data
order and seed by a plain PyTorch loop, this Trainer, this Accelerator and, when installed (the
``bench`` extra), Lightning's Trainer and HF Accelerate:

- ``char_transformer``: the demo's model (examples/char_transformer.py: 4 blocks, 4 heads,
  d_model 128, context 128, batch 16; 0.8M parameters) on the standard library's source, AdamW,
  gradient clipping at 1.0, windows drawn by a seeded RandomSampler through a DataLoader;
- ``mlp``: the MLP of benchmarks/ddp.py (256-512-512-10, batch 128, SGD, cross-entropy).

    python benchmarks/realistic.py                       # 5 rounds (~8 min on 2 idle cores)
    python benchmarks/realistic.py --rounds 1 --steps 4  # smoke run (the numbers mean nothing)

Timed steps per workload: 15 for the transformer, 150 for the MLP (about 8 s and 4 s of training
on one idle core); ``--steps`` sets both.

Method: every measurement is a fresh process with one thread (``--threads``); variants run one at
a time, in a shuffled order each round. The clock covers the ``--steps`` optimizer steps after
``--warmup``: the dataset notes the time when the first sample of the first timed batch and of the
batch after the last are fetched (no loader workers, so a fetch happens right before its step;
every loop that looks one batch ahead does so in both marks). Reported per variant: the median
over rounds of samples/s and of its ratio to the plain loop of the same round (and the range), the
same per second of the process's CPU time (``time.process_time``, steadier on a shared machine), and
peak RSS (``ru_maxrss`` at the end of the process: imports, model, optimizer state, activations)
with its ratio to the plain loop's. The architecture is written out here rather than imported from
the example so that the plain loop does not import this package (its RSS would count it); a smoke
test checks that both have the same parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "REALISTIC "
WORKLOADS = ("char_transformer", "mlp")
STEPS = {"char_transformer": 15, "mlp": 150}
VARIANTS = {"plain": ("plain PyTorch loop", None), "trainer": ("this Trainer", None),
            "accelerator": ("this Accelerator", None), "lightning": ("Lightning Trainer", "lightning"),
            "accelerate": ("HF Accelerate", "accelerate")}


# -- workloads (imported only inside the worker) ----------------------------------------------------
def _workload(name: str, steps: int, seed: int) -> dict[str, Any]:
    """Model, optimizer factory, loss, loader, clipping and the marked dataset of one workload."""
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

    class Marked(Dataset):
        """Counts fetched samples; notes the time when the counts in ``marks`` are reached."""

        def __init__(self, inner: Any, marks: set[int]) -> None:
            self.inner, self.marks, self.count, self.times = inner, marks, 0, {}

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int) -> Any:
            if self.count in self.marks:
                self.times[self.count] = (time.perf_counter(), time.process_time())
            self.count += 1
            return self.inner[i]

    torch.manual_seed(seed)
    if name == "mlp":
        batch, n = 128, 128 * steps
        g = torch.Generator().manual_seed(seed)
        data = TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))
        model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        make_opt: Callable = lambda params: torch.optim.SGD(params, lr=0.01)
        loss_fn: Callable = lambda m, b: F.cross_entropy(m(b[0]), b[1])
        clip, sampler = None, None
    else:
        batch = 16
        text = _stdlib_text(300_000)
        vocab = sorted(set(text))
        to_id = {c: i for i, c in enumerate(vocab)}
        ids = torch.tensor([to_id[c] for c in text], dtype=torch.long)
        data = _CharWindows(ids, 128)
        model = _char_transformer(len(vocab))
        make_opt = lambda params: torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)

        def loss_fn(m: Any, b: Any) -> Any:
            logits = m(b[0])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[1].reshape(-1))
        clip = 1.0
        sampler = RandomSampler(data, replacement=True, num_samples=batch * steps,
                                generator=torch.Generator().manual_seed(seed))
    return {"model": model, "make_opt": make_opt, "loss_fn": loss_fn, "clip": clip, "batch": batch,
            "data": data, "sampler": sampler, "Marked": Marked, "DataLoader": DataLoader}


def _stdlib_text(limit: int) -> str:
    """The standard library's top-level .py files in name order, as the demo reads them."""
    parts, total = [], 0
    for path in sorted(Path(os.path.dirname(os.__file__)).glob("*.py")):
        parts.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(parts[-1])
        if total >= limit:
            break
    return "".join(parts)[:limit]


class _CharWindows:
    def __init__(self, data: Any, block: int) -> None:
        self.data, self.block = data, block

    def __len__(self) -> int:
        return len(self.data) - self.block - 1

    def __getitem__(self, i: int) -> Any:
        chunk = self.data[i: i + self.block + 1]
        return chunk[:-1], chunk[1:]


def _char_transformer(vocab: int, block: int = 128, n_layer: int = 4, n_head: int = 4, d: int = 128) -> Any:
    """The demo's CharTransformer as a plain nn.Module (same layers, same initialisation)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = (z.view(b, t, n_head, c // n_head).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(c, 2))
            x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c))
            return x + self.mlp(self.ln2(x))

    class CharLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(block, d)
            self.blocks = nn.Sequential(*(Block() for _ in range(n_layer)))
            self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
            return self.head(self.ln_f(self.blocks(x)))

    return CharLM()


# -- the loops ------------------------------------------------------------------------------------
def _train(variant: str, w: dict[str, Any], loader: Any, steps: int, tmp: str) -> tuple[Any, int]:
    import torch

    model, loss_fn, clip = w["model"], w["loss_fn"], w["clip"]
    if variant == "plain":
        opt = w["make_opt"](model.parameters())
        model.train()
        done = 0
        for batch in loader:
            loss_fn(model, batch).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
            done += 1
        return model, done
    if variant in ("accelerator", "accelerate"):
        if variant == "accelerator":
            from trainer import Accelerator
            acc = Accelerator(cpu=True)
        else:
            from accelerate import Accelerator as HFAccelerator
            acc = HFAccelerator(cpu=True)
        opt = w["make_opt"](model.parameters())
        model, opt, loader = acc.prepare(model, opt, loader)
        model.train()
        done = 0
        for batch in loader:
            acc.backward(loss_fn(model, batch))
            if clip:
                acc.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
            done += 1
        return acc.unwrap_model(model), done
    if variant == "trainer":
        from trainer import Trainer, TrainModule as Base
        common = {"enable_progress_bar": False, "logger": False, "enable_checkpointing": False}
    else:
        import lightning.pytorch as pl
        from lightning.pytorch import LightningModule as Base, Trainer
        common = {"enable_progress_bar": False, "logger": False, "enable_checkpointing": False,
                  "enable_model_summary": False, "devices": 1}

    class Wrapped(Base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return loss_fn(self.net, batch)

        def configure_optimizers(self) -> Any:
            return w["make_opt"](self.parameters())

    module = Wrapped()
    trainer = Trainer(max_steps=steps, max_epochs=1, accelerator="cpu", num_sanity_val_steps=0,
                      gradient_clip_val=clip, default_root_dir=tmp, **common)
    trainer.fit(module, loader)
    return model, trainer.global_step


def run_worker(args: argparse.Namespace) -> None:
    import resource
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    args.steps = args.steps or STEPS[args.workload]
    total = args.warmup + args.steps + 2
    w = _workload(args.workload, total, args.seed)
    marks = {args.warmup * w["batch"], (args.warmup + args.steps) * w["batch"]}
    data = w["Marked"](w["data"], marks)
    loader = w["DataLoader"](data, batch_size=w["batch"], sampler=w["sampler"], shuffle=False, drop_last=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, done = _train(args.worker, w, loader, total, tmp)
    t0, t1 = (data.times.get(m) for m in sorted(marks))
    if t0 is None or t1 is None:
        raise SystemExit(f"{args.worker}: the timed batches were not fetched ({sorted(data.times)})")
    with torch.no_grad():
        checksum = float(sum(p.double().abs().sum() for p in model.parameters()))
    print(MARKER + json.dumps({
        "samples_per_s": args.steps * w["batch"] / (t1[0] - t0[0]),
        "samples_per_cpu_s": args.steps * w["batch"] / (t1[1] - t0[1]), "steps": done, "expected_steps": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "checksum": checksum,
        "params": sum(p.numel() for p in model.parameters())}), flush=True)


# -- driver ---------------------------------------------------------------------------------------
def _measure(args: argparse.Namespace, variant: str, workload: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--workload", workload,
           "--steps", str(args.steps or STEPS[workload]), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=args.cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode or not lines:
        raise SystemExit(f"{variant} on {workload} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER):])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.util

    wanted = ["plain", *(v for v in args.variants if v != "plain")]
    variants = [v for v in wanted if VARIANTS[v][1] is None or importlib.util.find_spec(VARIANTS[v][1])]
    skipped = [v for v in wanted if v not in variants]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(w, v): [] for w in args.workloads for v in variants}
    rng = random.Random(args.seed)
    for rnd in range(args.rounds):
        order = list(runs)
        rng.shuffle(order)
        for workload, variant in order:
            runs[(workload, variant)].append(_measure(args, variant, workload))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    return {"runs": runs, "variants": variants, "skipped": skipped}


def summarize(bench: dict[str, Any], args: argparse.Namespace) -> tuple[str, list[tuple[str, list[float]]]]:
    steps = ", ".join(f"{w} {args.steps or STEPS[w]}" for w in args.workloads)
    lines = [f"Samples/s and peak RSS against a plain PyTorch loop: timed optimizer steps {steps}, after "
             f"{args.warmup} of warm-up, {args.threads} thread(s), median of {args.rounds} interleaved rounds "
             "(each measurement a fresh process).", "",
             "| workload | variant | samples/s | ratio to plain | range | samples per CPU-s | CPU ratio | range | "
             "peak RSS MB | RSS ratio | weights vs plain |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    bars = []
    for workload in args.workloads:
        plain = bench["runs"][(workload, "plain")]
        for variant in bench["variants"]:
            rs = bench["runs"][(workload, variant)]
            ratios = [r["samples_per_s"] / p["samples_per_s"] for r, p in zip(rs, plain)]
            cpu = [r["samples_per_cpu_s"] / p["samples_per_cpu_s"] for r, p in zip(rs, plain)]
            rss = [r["peak_rss_mb"] / p["peak_rss_mb"] for r, p in zip(rs, plain)]
            diff = max(abs(r["checksum"] - p["checksum"]) / p["checksum"] for r, p in zip(rs, plain))
            ok = all(r["steps"] == r["expected_steps"] for r in rs)
            label = VARIANTS[variant][0]
            lines.append(f"| {workload} | {label} | {statistics.median(r['samples_per_s'] for r in rs):.0f} | "
                         f"{statistics.median(ratios):.3f}x | {min(ratios):.3f}-{max(ratios):.3f}x | "
                         f"{statistics.median(r['samples_per_cpu_s'] for r in rs):.0f} | {statistics.median(cpu):.3f}x | "
                         f"{min(cpu):.3f}-{max(cpu):.3f}x | "
                         f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | {statistics.median(rss):.3f}x | "
                         f"{diff:.1e}{'' if ok else ' (STEPS WRONG)'} |")
            bars.append((f"{workload}: {label}", cpu))
    params = {w: bench["runs"][(w, "plain")][0]["params"] for w in args.workloads}
    lines += ["", f"Parameters: {', '.join(f'{w} {n / 1e6:.2f}M' for w, n in params.items())}. Ratio: the "
              "variant's samples/s over the plain loop's in the same round (higher is faster); CPU ratio: the same with "
              "the process's CPU time instead of wall time (the chart shows it: on a shared machine, waiting for a "
              "core inflates wall time but not CPU time). Weights vs plain: "
              "the largest relative difference of the summed |weights| after training."]
    if bench["skipped"]:
        lines.append(f"Not installed, not measured: {', '.join(bench['skipped'])} (`pip install -e .[bench]`).")
    if args.rounds < 3:
        lines.append("SMOKE RUN (fewer than 3 rounds): the numbers are not meaningful.")
    return "\n".join(lines), bars


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=0, help="timed optimizer steps (default: 15 transformer, 150 MLP)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (plain is always measured)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="also write the raw measurements here")
    p.add_argument("--results", help="also write realistic.md and realistic.png in this directory")
    p.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_worker(args)
    args.workloads = [w.strip() for w in args.workloads.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",")]
    for given, known, flag in ((args.workloads, WORKLOADS, "--workloads"), (args.variants, VARIANTS, "--variants")):
        unknown = [x for x in given if x not in known]
        if unknown:
            p.error(f"{flag}: unknown {unknown}; expected some of {', '.join(known)}")
    import tempfile

    with tempfile.TemporaryDirectory() as cwd:
        args.cwd = cwd
        bench = run(args)
    table, bars = summarize(bench, args)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{w}/{v}": rs for (w, v), rs in bench["runs"].items()}, indent=1))
    if args.results:
        sys.path.insert(0, str(HERE))
        from _report import write_results

        for path in write_results(args.results, "realistic", "Real workloads: samples/s relative to a plain loop",
                                  table, bars, "samples per CPU-second / plain PyTorch loop (same round)", better="higher"):
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
