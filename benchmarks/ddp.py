"""DDP on 2 CPU processes: this Trainer and this Accelerator against raw torch DDP, side by side.

By default each round launches 2 processes (gloo, one thread each) per door, and raw PyTorch's DDP
loop (``torch.nn.parallel.DistributedDataParallel``, its own model, optimizer, loader and sampler)
runs in the *same* processes, on the same process group, chunk by chunk between ours: ours, raw,
ours, raw, ... For the Trainer (``Trainer(strategy="ddp")`` under ``trainer launch``) a callback
runs raw torch's chunk at each chunk boundary of the Trainer's loop; for the Accelerator
(``accelerator.prepare`` under ``trainer launch``) the script alternates the two loops. Raw torch
samples the data as the door beside it does (the Trainer's shuffling DistributedSampler, prepare()'s
batch dealing), so both train the same weights, bit for bit, and every round checks it. A round's
ratio is the median, over neighbouring chunk pairs, of raw torch's chunk time over ours (samples/s
over raw torch's): a burst of load on this shared machine falls on two neighbouring chunks alike
instead of on one whole run. The **control** pairs raw torch DDP with an identical second raw torch
DDP loop the same way (under torchrun): its ratio would be 1.000, so how far its rounds stray is
the resolution of the measurement on this machine. Beside it, the same from rank zero's CPU time
(raw torch's over ours, higher is better).

``--separate`` is the older comparison: raw torch DDP under torchrun, the Trainer and the Accelerator
each in launches of their own, order reversed every other round, each run's rate its median chunk
(``--single`` adds the 1-process runs). ``--pin`` puts rank r on core r.

    python benchmarks/ddp.py [--rounds 5] [--steps 200] [--chunk 20] [--results DIR]
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = textwrap.dedent("""
    import json, os, statistics, sys, time
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    out, global_batch, steps, warmup, chunk = sys.argv[1], *map(int, sys.argv[2:6])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if os.environ.get("BENCH_PIN") and world > 1:  # --pin: rank r on core r (of those this process may use)
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(os.environ.get("LOCAL_RANK", rank)) % len(cores)]})

    def make_net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                   torch.nn.ReLU(), torch.nn.Linear(512, 10))

    def make_data():
        g = torch.Generator().manual_seed(0)
        n = global_batch * (steps + 1)
        return TensorDataset(torch.randn(n, 256, generator=g), torch.randint(0, 10, (n,), generator=g))

    marks = {}  # step -> perf_counter at the start of that step (rank zero)

    def mark(step):
        if step == 0:
            marks["first"] = time.time()
        if step >= warmup and (step - warmup) % chunk == 0:
            marks[step] = (time.perf_counter(), time.process_time())

    def report(weights):
        if rank != 0:
            return
        points = sorted(k for k in marks if k != "first")
        rates = [global_batch * (b - a) / (marks[b][0] - marks[a][0]) for a, b in zip(points, points[1:])]
        cpu = [1e3 * (marks[b][1] - marks[a][1]) / (b - a) for a, b in zip(points, points[1:])]
        checksum = float(sum(w.double().sum() for w in weights))
        json.dump({"first_step": marks["first"], "chunk_rates": rates, "samples_per_s": statistics.median(rates),
                   "chunk_cpu_ms": cpu, "cpu_ms_per_step": statistics.median(cpu), "checksum": checksum},
                  open(out, "w"))
""")

# The module both Trainer scripts train (after COMMON, with the package importable).
TRAINER_MODULE = textwrap.dedent("""
    from trainer import Trainer, TrainModule
    from trainer.callbacks import Callback

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.net = make_net()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)
""")

TRAINER = COMMON + textwrap.dedent("""
    sys.path.insert(0, {root!r})
""") + TRAINER_MODULE + textwrap.dedent("""

    class Clock(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            mark(trainer.global_step)

        def on_train_end(self, trainer, module):
            mark(trainer.global_step)

    trainer = Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=[Clock()])
    module = Net()
    trainer.fit(module, DataLoader(make_data(), batch_size=global_batch // world))
    report(list(module.parameters()))
""")

ACCELERATOR = COMMON + textwrap.dedent("""
    sys.path.insert(0, {root!r})
    from trainer import Accelerator

    accelerator = Accelerator(cpu=True)
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    model, optimizer, loader = accelerator.prepare(net, optimizer,
                                                   DataLoader(make_data(), batch_size=global_batch // world))
    for step, (x, y) in enumerate(loader):
        mark(step)
        if step == steps:
            break
        accelerator.backward(torch.nn.functional.cross_entropy(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
    report(list(net.parameters()))
    accelerator.end_training()
""")

RAW = COMMON + textwrap.dedent("""
    import torch.distributed as dist

    if world > 1:
        dist.init_process_group("gloo")
    net = make_net()
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = make_data()
    sampler = DistributedSampler(data, shuffle=False) if world > 1 else None
    for step, (x, y) in enumerate(DataLoader(data, batch_size=global_batch // world, sampler=sampler)):
        mark(step)
        if step == steps:
            break
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    report(list(net.parameters()))
    if world > 1:
        dist.destroy_process_group()
""")


# Paired mode: raw torch DDP runs in the same two processes as ours, on the same process group,
# chunk by chunk between ours (ours, raw, ours, raw, ...). A burst of load on this shared machine
# then falls on two neighbouring chunks alike instead of on one whole run.
PAIRED_COMMON = COMMON + textwrap.dedent("""
    sys.path.insert(0, {root!r})
    import torch.distributed as dist

    class RawLoop:
        \"\"\"Raw torch DDP (its own model, optimizer, loader and sampler) stepped n steps at a time;
        ``shuffle`` as the door beside it reads the data, so both train the same weights.\"\"\"

        def __init__(self, shuffle):
            self.net = make_net()
            self.model = torch.nn.parallel.DistributedDataParallel(self.net)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)
            data = make_data()
            local = global_batch // world
            if shuffle:  # the Trainer's way: a shuffling DistributedSampler, the global seed's (0)
                sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=0)
            else:  # prepare()'s way, as Accelerate's: rank r reads batches r, r + world, ... of the loader
                sampler = [i for b in range(rank, len(data) // local, world) for i in range(b * local, (b + 1) * local)]
            self.batches = iter(DataLoader(data, batch_size=global_batch // world, sampler=sampler))

        def run(self, n):
            for _ in range(n):
                x, y = next(self.batches)
                torch.nn.functional.cross_entropy(self.model(x), y).backward()
                self.optimizer.step()
                self.optimizer.zero_grad()

    chunks = {"ours": [], "raw": []}  # (wall s, CPU s) of each timed chunk, rank zero's clocks

    def clock():
        return time.perf_counter(), time.process_time()

    def since(start):
        now = clock()
        return now[0] - start[0], now[1] - start[1]

    def timed_raw(raw, n):
        start = clock()
        raw.run(n)
        chunks["raw"].append(since(start))

    def report_paired(ours, raw, first):
        if rank != 0:
            return
        checksum = lambda ws: float(sum(w.double().sum() for w in ws))
        json.dump({"first_step": first, "ours": chunks["ours"], "raw": chunks["raw"],
                   "checksum": checksum(ours), "raw_checksum": checksum(raw)}, open(out, "w"))
""")

PAIRED_TRAINER = PAIRED_COMMON + TRAINER_MODULE + textwrap.dedent("""

    class Interleave(Callback):
        \"\"\"At every chunk boundary of the Trainer's loop: close our chunk, run raw torch's, reopen ours.\"\"\"

        def __init__(self):
            self.raw, self.start, self.first = None, None, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.boundary(trainer.global_step)

        def on_train_end(self, trainer, module):
            self.boundary(trainer.global_step)

        def boundary(self, step):
            if self.first is None:
                self.first = time.time()
            if step < warmup or (step - warmup) % chunk:
                return
            if self.raw is None:  # the first boundary: the process group is up; warm raw torch up too
                self.raw = RawLoop(shuffle=True)  # the Trainer's sampler shuffles, as Lightning's
                self.raw.run(warmup)
            else:
                chunks["ours"].append(since(self.start))
                timed_raw(self.raw, chunk)
            self.start = clock()

    interleave = Interleave()
    trainer = Trainer(max_steps=warmup + chunk * ((steps - warmup) // chunk), logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      accelerator="cpu", callbacks=[interleave])
    module = Net()
    trainer.fit(module, DataLoader(make_data(), batch_size=global_batch // world))
    report_paired(list(module.parameters()), list(interleave.raw.net.parameters()), interleave.first)
""")

PAIRED_ACCELERATOR = PAIRED_COMMON + textwrap.dedent("""
    from trainer import Accelerator

    accelerator = Accelerator(cpu=True)
    net = make_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    model, optimizer, loader = accelerator.prepare(net, optimizer,
                                                   DataLoader(make_data(), batch_size=global_batch // world))
    batches = iter(loader)
    first = time.time()

    def ours(n):
        for _ in range(n):
            x, y = next(batches)
            accelerator.backward(torch.nn.functional.cross_entropy(model(x), y))
            optimizer.step()
            optimizer.zero_grad()

    raw = RawLoop(shuffle=False)  # prepare() keeps the loader's order, as Accelerate's
    ours(warmup)
    raw.run(warmup)
    for _ in range((steps - warmup) // chunk):
        start = clock()
        ours(chunk)
        chunks["ours"].append(since(start))
        timed_raw(raw, chunk)
    report_paired(list(net.parameters()), list(raw.net.parameters()), first)
    accelerator.end_training()
""")

# The control: raw torch DDP against a second, identical raw torch DDP loop, paired the same way. Its
# ratio would be 1.000 on a quiet machine; how far its rounds stray is what this machine can resolve.
PAIRED_CONTROL = PAIRED_COMMON + textwrap.dedent("""
    dist.init_process_group("gloo")
    first = time.time()
    twin, raw = RawLoop(shuffle=True), RawLoop(shuffle=True)
    twin.run(warmup)
    raw.run(warmup)
    for _ in range((steps - warmup) // chunk):
        start = clock()
        twin.run(chunk)
        chunks["ours"].append(since(start))
        timed_raw(raw, chunk)
    report_paired(list(twin.net.parameters()), list(raw.net.parameters()), first)
    dist.destroy_process_group()
""")


def _run(cmd: list[str], out: str, env: dict) -> dict:
    if os.path.exists(out):
        os.remove(out)
    start = time.time()
    done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{done.stderr[-4000:]}")
    with open(out) as f:
        result = json.load(f)
    result["to_first_step"] = result["first_step"] - start
    return result


RAW_DDP, TRAINER_DDP = "raw torch DDP, 2 processes", "Trainer DDP, 2 processes"
ACCEL_DDP = "Accelerator DDP, 2 processes"
RAW_1, TRAINER_1 = "raw torch, 1 process", "Trainer, 1 process"
RAW_BY_TRAINER, RAW_BY_ACCEL = "raw torch DDP, beside the Trainer", "raw torch DDP, beside the Accelerator"
TWIN, RAW_BY_TWIN = "raw torch DDP again (control)", "raw torch DDP, beside its twin"
PAIRS = [(TRAINER_DDP, RAW_DDP), (ACCEL_DDP, RAW_DDP), (TRAINER_1, RAW_1),
         (TRAINER_DDP, RAW_BY_TRAINER), (ACCEL_DDP, RAW_BY_ACCEL), (TWIN, RAW_BY_TWIN)]


def _paired_rows(result: dict, chunk: int, global_batch: int) -> tuple[dict, dict]:
    """One paired launch -> (ours, raw torch's) in the separate runs' shape; ours also carries the
    round's ratios: the median over neighbouring chunk pairs of raw torch's time over ours."""
    def shape(times: list[list[float]], checksum: float, first: float | None) -> dict:
        rates = [global_batch * chunk / wall for wall, _ in times]
        cpu = [1e3 * c / chunk for _, c in times]
        return {"chunk_rates": rates, "samples_per_s": statistics.median(rates), "chunk_cpu_ms": cpu,
                "cpu_ms_per_step": statistics.median(cpu), "checksum": checksum, "to_first_step": first}

    ours = shape(result["ours"], result["checksum"], result["to_first_step"])
    raw = shape(result["raw"], result["raw_checksum"], None)
    ours["ratio"] = statistics.median(r[0] / o[0] for o, r in zip(result["ours"], result["raw"]))
    ours["cpu_ratio"] = statistics.median(r[1] / o[1] for o, r in zip(result["ours"], result["raw"]))
    return ours, raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (the warm-up included)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each run")
    parser.add_argument("--chunk", type=int, default=20, help="steps per timed chunk")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--no-accelerator", action="store_true", help="leave the Accelerator's runs out")
    parser.add_argument("--single", action="store_true", help="also the 1-process runs (2 threads; with --separate)")
    parser.add_argument("--separate", action="store_true",
                        help="raw torch DDP in launches of its own (default: in the same processes as ours, "
                             "chunk by chunk between ours)")
    parser.add_argument("--no-control", action="store_true",
                        help="leave out the control (raw torch DDP paired with an identical raw torch DDP loop)")
    parser.add_argument("--pin", action="store_true", help="pin rank r of each launch to core r (Linux)")
    parser.add_argument("--json", help="write every run's numbers here")
    parser.add_argument("--results", help="also write ddp.md and ddp.png (ratio bars) in this directory")
    args = parser.parse_args(argv)
    if args.steps < args.warmup + 2 * args.chunk:
        parser.error(f"--steps {args.steps}: expected at least --warmup + 2 x --chunk = "
                     f"{args.warmup + 2 * args.chunk} (two timed chunks).")
    tmp = tempfile.mkdtemp(prefix="bench-ddp-")
    scripts = {}
    if args.single and not args.separate:
        parser.error("--single compares separate launches: add --separate.")
    texts = {"trainer": TRAINER, "accelerator": ACCELERATOR, "raw": RAW, "paired_trainer": PAIRED_TRAINER,
             "paired_accelerator": PAIRED_ACCELERATOR, "paired_control": PAIRED_CONTROL}
    for name, text in texts.items():
        scripts[name] = os.path.join(tmp, f"{name}.py")
        with open(scripts[name], "w") as f:
            f.write(text.replace("{root!r}", repr(ROOT)))
    out = os.path.join(tmp, "out.json")
    env = {**os.environ, "TRAINER_CONFIG_FILE": os.path.join(tmp, "none.yaml"), "OMP_NUM_THREADS": "1"}
    if args.pin:
        env["BENCH_PIN"] = "1"
    common = [out, str(args.global_batch), str(args.steps), str(args.warmup), str(args.chunk)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    launch = [sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--cpu"]
    if args.separate:
        runs = {RAW_DDP: [*torchrun, scripts["raw"], *common], TRAINER_DDP: [*launch, scripts["trainer"], *common]}
        if not args.no_accelerator:
            runs[ACCEL_DDP] = [*launch, scripts["accelerator"], *common]
    else:
        runs = {TRAINER_DDP: [*launch, scripts["paired_trainer"], *common]}
        if not args.no_accelerator:
            runs[ACCEL_DDP] = [*launch, scripts["paired_accelerator"], *common]
        if not args.no_control:
            runs[TWIN] = [*torchrun, scripts["paired_control"], *common]
    beside = {TRAINER_DDP: RAW_BY_TRAINER, ACCEL_DDP: RAW_BY_ACCEL, TWIN: RAW_BY_TWIN}
    if args.single:
        runs[RAW_1] = [sys.executable, scripts["raw"], *common]
        runs[TRAINER_1] = [sys.executable, scripts["trainer"], *common]
    rows: dict[str, list[dict]] = {}
    if not args.separate:
        for name in runs:
            rows[beside[name]] = []
    rows.update({name: [] for name in runs})
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            run_env = {**env, "OMP_NUM_THREADS": "2"} if name in (RAW_1, TRAINER_1) else env
            result = _run(runs[name], out, run_env)
            if args.separate:
                rows[name].append(result)
            else:
                ours, raw = _paired_rows(result, args.chunk, args.global_batch)
                rows[name].append(ours)
                rows[beside[name]].append(raw)
        loads.append(os.getloadavg()[0])
        line = "  ".join(f"{ours.split(',')[0]} {_ratios(rows, ours, raw)[-1]:.3f}x "
                         f"(CPU {_cpu_ratios(rows, ours, raw)[-1]:.3f}x)" for ours, raw in PAIRS
                         if ours in rows and raw in rows)
        print(f"round {r + 1}/{args.rounds}: {line}  (load average {loads[-1]:.1f})", file=sys.stderr, flush=True)
    _print(args, rows, loads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "loads": loads, "rows": rows}, f, indent=1)
    if args.results:
        _write_results(args, rows, loads)


def _ratios(rows: dict[str, list[dict]], ours: str, raw: str) -> list[float]:
    return [a.get("ratio", a["samples_per_s"] / b["samples_per_s"]) for a, b in zip(rows[ours], rows[raw])]


def _cpu_ratios(rows: dict[str, list[dict]], ours: str, raw: str) -> list[float]:
    return [a.get("cpu_ratio", b["cpu_ms_per_step"] / a["cpu_ms_per_step"]) for a, b in zip(rows[ours], rows[raw])]


def _raw_of(rows: dict[str, list[dict]], name: str) -> str | None:
    return next((b for a, b in PAIRS if a == name and b in rows), None)


def _table(args: argparse.Namespace, rows: dict[str, list[dict]], loads: list[float]) -> str:
    if args.separate:
        how = ("each run its own launch, order reversed every other round; a run's rate is its median chunk; "
               "ratio: samples/s over raw torch with the same number of processes in the same round")
    else:
        how = ("raw torch DDP in the same two processes as ours, chunk by chunk between ours (ours, raw, ours, "
               "raw, ...); a round is one launch; its ratio is the median over neighbouring chunk pairs of raw "
               "torch's time over ours (samples/s over raw torch's). The control pairs raw torch DDP with an "
               "identical second raw torch DDP loop: its ratio is 1.000 but for what this machine cannot resolve")
    lines = [f"MLP 256-512-512-10, global batch {args.global_batch}, {args.steps} steps per run ({args.warmup} "
             f"untimed, then chunks of {args.chunk}), {args.rounds} rounds; {how}. Load average (1 min) during "
             f"the rounds: {min(loads):.1f}-{max(loads):.1f}.", "",
             "| run | samples/s (median) | ratio to raw torch, each round | median | lowest | start to first step "
             "| rank 0 CPU ms/step | CPU ratio (raw/ours), each round | median | lowest |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for name, results in rows.items():
        speed = statistics.median(r["samples_per_s"] for r in results)
        starts = [r["to_first_step"] for r in results if r["to_first_step"] is not None]
        first = f"{statistics.median(starts):.2f} s" if starts else "(same launch)"
        cpu_ms = statistics.median(r["cpu_ms_per_step"] for r in results)
        raw = _raw_of(rows, name)
        if raw is None:
            lines.append(f"| {name} | {speed:.0f} | (reference) | 1.000x | | {first} | {cpu_ms:.2f} "
                         "| (reference) | 1.000x | |")
            continue
        ratios, cpu = _ratios(rows, name, raw), _cpu_ratios(rows, name, raw)
        each = " ".join(f"{x:.3f}" for x in ratios)
        lines.append(f"| {name} | {speed:.0f} | {each} | {statistics.median(ratios):.3f}x | {min(ratios):.3f}x | "
                     f"{first} | {cpu_ms:.2f} | {' '.join(f'{x:.3f}' for x in cpu)} | "
                     f"{statistics.median(cpu):.3f}x | {min(cpu):.3f}x |")
    return "\n".join(lines)


def _print(args: argparse.Namespace, rows: dict[str, list[dict]], loads: list[float]) -> None:
    print(_table(args, rows, loads))
    checks = {name: {round(r["checksum"], 3) for r in results} for name, results in rows.items()}
    if args.separate:
        ddp = {c for name in (RAW_DDP, TRAINER_DDP, ACCEL_DDP) if name in checks for c in checks[name]}
        print(f"\nweights checksum after training: {'the same in every DDP run' if len(ddp) == 1 else checks}")
        return
    for ours in (TRAINER_DDP, ACCEL_DDP, TWIN):
        if ours in rows:
            raw = _raw_of(rows, ours)
            same = [a["checksum"] == b["checksum"] for a, b in zip(rows[ours], rows[raw])]
            print(f"\n{ours}: weights checksum after training {'equal to' if all(same) else 'NOT equal to'} "
                  f"raw torch's beside it in {sum(same)} of {len(same)} rounds ({sorted(checks[ours])})")


def _write_results(args: argparse.Namespace, rows: dict[str, list[dict]], loads: list[float]) -> None:
    """benchmarks/results/ddp.md and ddp.png: ours against raw torch with the same process count."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _report import write_results

    bars = [(ours, _ratios(rows, ours, raw)) for ours in rows if (raw := _raw_of(rows, ours))]
    for path in write_results(args.results, "ddp", "DDP on 2 CPU processes: this Trainer and Accelerator vs raw "
                              "PyTorch", _table(args, rows, loads), bars,
                              "samples/s / raw PyTorch (same processes, same round)", better="higher"):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
