"""Smoke test of benchmarks/overhead.py: it runs end to end and reports every variant.

No timing is asserted: the numbers of a --quick run mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from tests import ROOT

SCRIPT = ROOT / "benchmarks" / "overhead.py"


def _expected_labels() -> list[str]:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from _variants import VARIANTS
    finally:
        sys.path.remove(str(SCRIPT.parent))
    labels = []
    for k in (1,):  # accumulation 4 runs the same workers with another argument: the chart test below runs it
        for v in VARIANTS.values():
            if not v.optional and (v.requires is None or importlib.util.find_spec(v.requires) is not None):
                labels.append(v.label + (f", accum {k}" if k > 1 else ""))
    return labels


@pytest.mark.timeout(180)
def test_quick_run_prints_every_variant_row(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--steps", "12", "--warmup", "2", "--chunks", "3", "--jobs", "2",
         "--accum-list", "1", "--json", str(out_json)],
        capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0][2:]: line for line in table}
    for label in _expected_labels():
        assert label in rows, f"no row for {label!r} in:\n{proc.stdout}"
        assert re.search(r"\| \d+(\.\d+)?x \|", rows[label]), rows[label]
    assert rows["plain PyTorch loop"].count("1.00x") >= 1
    assert "`import torch`" in rows and "`import torch, trainer`" in rows

    raw = json.loads(out_json.read_text())
    for row in raw["rows"]:
        # Every loop really ran its optimizer steps and landed on the plain loop's weights.
        assert row["steps_ok"], row
        assert row["weights_rel_diff"] < 1e-3, row
    for entry in raw["runs"]:
        for result in entry["runs"]:
            assert result["variant"] == entry["variant"] and result["accum"] == entry["accum"]
            assert result["optimizer_steps"] == result["expected_steps"] == 2 + 12 + 2
            assert result["threads"] == 1 and len(result["chunk_us_per_step"]) == 3
            assert result["us_per_step"] > 0
            assert abs(result["us_per_micro"] * result["accum"] - result["us_per_step"]) <= 1e-6 * result["us_per_step"]



@pytest.mark.timeout(180)
def test_logging_cost_variants_run_when_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--steps", "60", "--warmup", "2", "--chunks", "2", "--accum-list", "1",
         "--import-reps", "0", "--variants", "trainer_self_log,trainer_csv"],
        capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| Trainer, barebones + self.log")]
    assert len(rows) == 2 and all(re.search(r"\| \d+(\.\d+)?x \|", row) for row in rows), proc.stdout
    assert "| Trainer, barebones |" not in proc.stdout  # optional variants only add to what was named


@pytest.mark.timeout(180)
def test_logger_calls_benchmark_times_the_flush_and_each_logger(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logger_calls.py"), "--steps", "300",
                           "--loggers", "csv,tensorboard"], capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for label in ("read back the logged values (flush)", "CSVLogger.log_metrics", "TensorBoardLogger.log_metrics"):
        assert re.search(r"\| [678] \| \d+\.\d \| \d+\.\d\d \| \d+\.\d%", rows.get(label, "")), proc.stdout


def _ddp_benchmark(tmp_path, *extra):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp.py"), "--rounds", "1", "--steps", "24",
                           "--warmup", "4", "--chunk", "10", "--json", str(tmp_path / "ddp.json"), *extra],
                          capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0][2:]: line for line in proc.stdout.splitlines() if line.startswith("| ")}
    return proc, rows, json.loads((tmp_path / "ddp.json").read_text())["rows"]


_RATIO = r"\d+\.\d{3}"
_OURS_ROW = rf"\| \d+ \| {_RATIO} \| {_RATIO}x \| {_RATIO}x \| \d+\.\d\d s \| \d+\.\d\d \| {_RATIO} \| {_RATIO}x \| {_RATIO}x \|$"


@pytest.mark.timeout(240)
def test_ddp_benchmark_runs_raw_torch_ddp_between_our_chunks_in_the_same_processes(tmp_path):
    proc, rows, raw = _ddp_benchmark(tmp_path)
    for ours, beside in (("Trainer DDP, 2 processes", "raw torch DDP, beside the Trainer"),
                         ("Accelerator DDP, 2 processes", "raw torch DDP, beside the Accelerator"),
                         ("raw torch DDP again (control)", "raw torch DDP, beside its twin")):
        assert "(reference)" in rows[beside] and "(same launch)" in rows[beside]
        assert re.search(_OURS_ROW, rows[ours]), proc.stdout  # each round's ratio, median, lowest
        # both loops ran in the same launch: two timed chunks each, and the round's ratio is the median of
        # raw torch's chunk time over ours, chunk pair by chunk pair (not a ratio of the two medians)
        ours_run, raw_run = raw[ours][0], raw[beside][0]
        assert len(ours_run["chunk_rates"]) == len(raw_run["chunk_rates"]) == 2
        pairs = [a / b for a, b in zip(ours_run["chunk_rates"], raw_run["chunk_rates"])]
        assert ours_run["ratio"] == pytest.approx(sum(pairs) / 2, rel=1e-9)
        # the same sampling as the door beside it (the Trainer shuffles, prepare() keeps the order): same weights
        assert ours_run["checksum"] == raw_run["checksum"]
        assert f"{ours}: weights checksum after training equal to raw torch's beside it in 1 of 1 rounds" in proc.stdout
    assert re.search(r"round 1/1: Trainer DDP \d+\.\d{3}x \(CPU \d+\.\d{3}x\)  Accelerator DDP \d+\.\d{3}x \(CPU"
                     r".*raw torch DDP again \(control\) \d+\.\d{3}x", proc.stderr), proc.stderr


@pytest.mark.timeout(240)
def test_ddp_benchmark_separate_launches_put_the_trainer_beside_raw_torch_ddp(tmp_path):
    proc, rows, raw = _ddp_benchmark(tmp_path, "--separate", "--no-accelerator")
    assert "(reference)" in rows["raw torch DDP, 2 processes"]
    assert re.search(_OURS_ROW, rows["Trainer DDP, 2 processes"]), proc.stdout
    for runs in raw.values():  # every run timed its two chunks
        assert len(runs[0]["chunk_rates"]) == len(runs[0]["chunk_cpu_ms"]) == 2
    # raw torch reads in order, the Trainer shuffles (as Lightning's sampler): close, not equal
    assert raw["Trainer DDP, 2 processes"][0]["checksum"] == pytest.approx(
        raw["raw torch DDP, 2 processes"][0]["checksum"], rel=1e-2)


@pytest.mark.timeout(400)
def test_sharded_benchmark_reports_every_strategy():
    # The full benchmark also runs ZeRO-2 and ZeRO-3 (the same launch with another strategy name); their
    # per-rank bytes are pinned in test_deepspeed.py. Here the reference row (DDP) and one sharded row.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sharded.py"), "--rounds", "1", "--steps", "6",
                           "--strategies", "ddp,fsdp"], capture_output=True, text=True, timeout=390)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.startswith(("DDP", "FSDP", "ZERO"))}
    assert set(rows) == {"DDP", "FSDP"}
    assert float(rows["FSDP"][1]) == pytest.approx(float(rows["DDP"][1]) / 2, rel=0.05)  # parameters per rank halve
    assert float(rows["FSDP"][3]) == pytest.approx(float(rows["DDP"][3]) / 2, rel=0.05)  # so does optimizer state


@pytest.mark.timeout(300)
def test_sharded_save_stall_benchmark_times_both_saves_and_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sharded.py"), "--save-stall", "--rounds", "1",
                           "--events", "1", "--gap", "1", "--layers", "1", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| synchronous", "| async_save"))]
    assert len(rows) == 2 and "1.00x" in rows[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded_save.md", "sharded_save.png"]


@pytest.mark.timeout(300)
def test_realistic_benchmark_trains_every_loop_to_the_same_weights_and_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "realistic.py"), "--rounds", "1", "--steps", "2",
                           "--warmup", "1", "--workloads", "mlp", "--json", str(tmp_path / "raw.json"),
                           "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| mlp |")]
    expected = {"plain PyTorch loop", "this Trainer", "this Accelerator"}
    expected |= {"Lightning Trainer"} if importlib.util.find_spec("lightning") else set()
    expected |= {"HF Accelerate"} if importlib.util.find_spec("accelerate") else set()
    assert {row[1] for row in rows} == expected, proc.stdout
    raw = json.loads((tmp_path / "raw.json").read_text())
    plain = raw["mlp/plain"][0]
    for runs in raw.values():  # every loop ran its steps and landed on the plain loop's weights
        assert runs[0]["steps"] == runs[0]["expected_steps"] == 1 + 2 + 2
        assert runs[0]["checksum"] == pytest.approx(plain["checksum"], rel=1e-6)
        assert runs[0]["peak_rss_mb"] > 50
    assert (tmp_path / "results" / "realistic.md").read_text().count("| mlp |") == len(expected)
    assert (tmp_path / "results" / "realistic.png").read_bytes()[:4] == b"\x89PNG"


def test_realistic_benchmark_builds_the_demos_transformer():
    """The benchmark writes the demo's architecture out (so its plain loop does not import this
    package): same parameter names, shapes and initial values as examples/char_transformer.py."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import char_transformer
        import realistic
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.path.remove(str(ROOT / "examples"))
    import torch

    torch.manual_seed(0)
    demo = char_transformer.CharTransformer(70).state_dict()
    torch.manual_seed(0)
    bench = realistic._char_transformer(70).state_dict()
    assert list(bench) == list(demo)
    for name, value in demo.items():
        assert torch.equal(bench[name], value), name


def test_overhead_benchmark_writes_a_table_and_a_chart(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--steps", "6", "--warmup", "1", "--chunks", "2", "--accum-list", "4",
         "--import-reps", "0", "--variants", "trainer_barebones", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "overhead.md").read_text()
    assert re.search(r"\| Trainer, barebones, accum 4 \| [\d.]+ \| [\d.]+ \| \d+\.\d\dx", table), table and "![" in table and "load average" in table
    assert (tmp_path / "overhead.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(300)
def test_startup_benchmark_times_imports_and_every_launcher(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--import-runs", "1",
                           "--launch-rounds", "1", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("`import trainer` after `import torch` | +", "raw script, torchrun: to first step",
                "raw script, trainer launch: to first step", "Trainer script, torchrun: to first step",
                "Trainer script, trainer launch: to first step", "launcher process CPU s at that point"):
        assert row in proc.stdout, proc.stdout
    assert (tmp_path / "startup.png").exists() and (tmp_path / "startup.md").exists()


def _compare(tmp_path, *extra):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compare_trees.py"), "--tree", f"a={ROOT}", "--tree", f"b={ROOT}",
         "--reps", "1", "--steps", "5", "--warmup", "1", "--json", str(tmp_path / "compare.json"), *extra],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "µs" not in line]
    return rows, json.loads((tmp_path / "compare.json").read_text())


@pytest.mark.timeout(300)
def test_compare_trees_measures_each_tree_side_by_side(tmp_path):
    """benchmarks/compare_trees.py: two names for this checkout, every variant's row per tree, and the
    reference tree's CPU time at 1.00x of itself (one process per tree and round: --same-process)."""
    rows, raw = _compare(tmp_path, "--same-process", "--variants", "trainer_barebones,accelerator",
                         "--accum-list", "1,2")
    assert {(r[0][2:], r[1], r[2]) for r in rows} == {
        (v, k, t) for v in ("plain", "trainer_barebones", "accelerator") for k in ("1", "2") for t in ("a", "b")}
    assert all(r[-1].startswith("1.00x") for r in rows if r[2] == "a")
    for entry in raw:
        (result,) = entry["runs"]
        assert (result["variant"], result["accum"]) == (entry["variant"], entry["accum"])
        assert result["optimizer_steps"] == result["expected_steps"] == 1 + 5 + 2
        if entry["variant"] != "plain":
            assert result["trainer_file"].startswith(str(ROOT)), result["trainer_file"]


@pytest.mark.timeout(300)
def test_compare_trees_fresh_process_per_measurement(tmp_path):
    rows, raw = _compare(tmp_path, "--variants", "trainer_barebones", "--accum-list", "1")
    assert {(r[0][2:], r[2]) for r in rows} == {(v, t) for v in ("plain", "trainer_barebones") for t in ("a", "b")}
    assert all(len(entry["runs"]) == 1 for entry in raw)


def test_compare_trees_refuses_a_tree_that_is_not_a_checkout(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_trees.py"), "--tree", f"old={tmp_path}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "holds no trainer/__init__.py" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare_trees.py"), "--tree", str(ROOT)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "expected NAME=PATH" in proc.stderr, proc.stderr


@pytest.mark.timeout(300)
def test_logger_cost_benchmark_times_the_demo_model_with_each_logger_against_logging_off(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "logger_cost.py"), "--rounds", "1",
                           "--warmup", "2", "--chunks", "2", "--chunk", "5", "--log-every-n-steps", "5",
                           "--loggers", "csv,tensorboard", "--sync", "--json", str(tmp_path / "loggers.json")],
                          capture_output=True, text=True, timeout=290, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert "(reference)" in rows["logging off"]
    for name in ("csv, writer thread", "tensorboard, writer thread", "csv, training thread",
                 "tensorboard, training thread"):  # each round's ratio, median, highest, the other clocks, rows
        ratio = r"\d+\.\d{3}"
        cells = rf"\| \d+\.\d\d \| {ratio} \| {ratio}x \| {ratio}x \| {ratio}x \| {ratio}x \| 2"
        assert re.search(cells + r" \| \d+\.\d \| \d+\.\d{4}% \|$",
                         rows[name]), proc.stdout
    raw = json.loads((tmp_path / "loggers.json").read_text())["results"]
    assert all(len(runs[0]["wall_chunks"]) == 2 for runs in raw.values())
