"""`trainer launch` (through torchrun), `Trainer(strategy="ddp", devices=2)` from a plain script,
the precedence of code > launch flag > config file > default, and the cluster environment."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.strategies.environment import ClusterEnvironment, detect_environment, first_host
from trainer.cli.launch import torchrun_args
from trainer.cli.config_file import LaunchConfig
from tests import ROOT

pytestmark = pytest.mark.timeout(240)

SCRIPT = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(ROOT)!r})
    from trainer import Trainer
    from tests.helpers import BoringModel, regression_loader
    kwargs = eval(sys.argv[1]) if len(sys.argv) > 1 else {{}}
    if kwargs.pop("fail_on_rank_1", False):
        import os
        if os.environ["RANK"] == "1":
            raise RuntimeError("boom on rank 1")
    t = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False, **kwargs)
    t.fit(BoringModel(), regression_loader(32, 4))
    print(f"rank={{t.global_rank}} world={{t.world_size}} precision={{t.precision}} "
          f"accum={{t.config.accumulate_grad_batches}} steps={{t.global_step}} args={{sys.argv[2:]}}", flush=True)
""")


def _launch(tmp_path: Path, *args: str, config: str | None = None, script_args=("{}",)) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "config.yaml")}
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
    return subprocess.run([sys.executable, "-m", "trainer.cli", "launch", *args, str(script), *script_args],
                          capture_output=True, text=True, env=env, timeout=200, cwd=tmp_path)


def _rank_lines(out: str) -> list[str]:
    # two processes share the pipe: a line and its newline are separate writes and can interleave
    import re

    return sorted(re.findall(r"rank=\d+ world=.*?args=\[[^\]]*\]", out))


def test_launch_flags_reach_every_worker(tmp_path):
    result = _launch(tmp_path, "--num_processes", "2", "--mixed-precision", "bf16", "--cpu",
                     script_args=("{}", "--lr", "3e-4"))
    assert result.returncode == 0, result.stderr
    assert _rank_lines(result.stdout) == [
        f"rank={r} world=2 precision=bf16-mixed accum=1 steps=4 args=['--lr', '3e-4']" for r in (0, 1)]
    assert "no config file" in result.stderr


def test_code_beats_flag_beats_config_file_beats_default(tmp_path):
    config = "num_processes: 2\nmixed_precision: fp16\ngradient_accumulation_steps: 2\ndevice: cpu\n"
    result = _launch(tmp_path, "--mixed-precision", "bf16", config=config,
                     script_args=("{'precision': '32-true'}",))
    assert result.returncode == 0, result.stderr
    # precision: code; accumulation: config file (16 batches per rank / 2 = ... 4 batches of 4 -> 2 steps)
    assert _rank_lines(result.stdout) == [f"rank={r} world=2 precision=32-true accum=2 steps=2 args=[]"
                                          for r in (0, 1)]
    reports = [line for line in result.stdout.splitlines() if "overrides" in line]
    assert reports == ["Trainer(precision='32-true') in the code overrides mixed_precision: 'bf16' from `trainer "
                       "launch` (its flags and config file)."]  # once, on rank zero


def test_a_failing_rank_fails_the_launch(tmp_path):
    result = _launch(tmp_path, "--num-processes", "2", "--cpu", script_args=("{'fail_on_rank_1': True}",))
    assert result.returncode == 1
    assert "boom on rank 1" in result.stderr + result.stdout
    assert "trainer launch: ChildFailedError" in result.stderr


def test_trainer_with_two_devices_starts_its_workers_through_the_elastic_launcher(tmp_path):
    script = tmp_path / "plain.py"
    script.write_text(SCRIPT)
    result = subprocess.run([sys.executable, str(script), "{'strategy': 'ddp', 'devices': 2, 'accelerator': 'cpu'}",
                             "--x"], capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "elastic launcher" in result.stdout
    assert _rank_lines(result.stdout) == [f"rank={r} world=2 precision=32-true accum=1 steps=4 args=['--x']"
                                          for r in (0, 1)]


def test_torchrun_arguments_for_one_and_several_machines():
    one = torchrun_args(LaunchConfig(num_processes=4), "train.py", ["--lr", "1"])
    assert one == ["--nnodes", "1", "--nproc-per-node", "4", "--max-restarts", "0", "--standalone",
                   "train.py", "--lr", "1"]
    two = torchrun_args(LaunchConfig(num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                                     main_process_port=29500, num_processes=8, max_restarts=3), "t.py", [])
    assert two == ["--nnodes", "2", "--nproc-per-node", "8", "--max-restarts", "3", "--node-rank", "1",
                   "--rdzv-backend", "static", "--master-addr", "10.0.0.1", "--master-port", "29500", "t.py"]


def _parsed(*flags: str):
    import argparse

    from trainer.cli.launch import add_arguments

    parser = argparse.ArgumentParser(prog="trainer launch")
    add_arguments(parser)
    return parser.parse_args([*flags, "train.py"])


def test_torchrun_spellings_are_aliases_of_accelerates(tmp_path, monkeypatch):
    from trainer.cli.launch import resolve

    monkeypatch.setenv("TRAINER_CONFIG_FILE", str(tmp_path / "none.yaml"))
    torchrun = resolve(_parsed("--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                               "10.0.0.1", "--master_port", "29600"))
    accelerate = resolve(_parsed("--num_processes", "4", "--num-machines", "2", "--machine-rank", "1",
                                 "--main-process-ip", "10.0.0.1", "--main-process-port", "29600"))
    assert torchrun == accelerate
    assert (torchrun.num_processes, torchrun.num_machines, torchrun.machine_rank, torchrun.main_process_ip,
            torchrun.main_process_port, torchrun.min_machines) == (4, 2, 1, "10.0.0.1", 29600, None)


def test_a_range_of_machines_is_elastic_membership_with_the_c10d_rendezvous(tmp_path, monkeypatch, capsys):
    from trainer.cli.launch import resolve

    monkeypatch.setenv("TRAINER_CONFIG_FILE", str(tmp_path / "none.yaml"))
    for flag in ("--nnodes", "--num-machines", "--num_machines"):
        cfg = resolve(_parsed(flag, "1:4", "--max-restarts", "3"))
        assert (cfg.min_machines, cfg.num_machines, cfg.rdzv_backend) == (1, 4, "c10d")
    args = torchrun_args(cfg, "t.py", [], rdzv_conf="last_call_timeout=5")
    assert args[:6] == ["--nnodes", "1:4", "--nproc-per-node", "1", "--max-restarts", "3"]
    assert args[args.index("--rdzv-backend") + 1] == "c10d"
    assert args[args.index("--rdzv-conf") + 1] == "timeout=900,last_call_timeout=5"
    assert torchrun_args(resolve(_parsed("--nnodes", "2:2")), "t.py", [])[:2] == ["--nnodes", "2"]  # not elastic
    with pytest.raises(ValueError, match=r"a range of machines \(1:2\) needs the elastic rendezvous"):
        resolve(_parsed("--nnodes", "1:2", "--rdzv-backend", "static"))
    with pytest.raises(ValueError, match=r"min_machines=3\): the fewest machines cannot exceed the most"):
        resolve(_parsed("--nnodes", "3:2"))
    for bad in ("a:b", "1:", "two"):
        with pytest.raises(SystemExit):
            _parsed("--nnodes", bad)
        assert f"{bad!r}: expected a number of machines such as 2, or a range MIN:MAX" in capsys.readouterr().err


def test_cluster_environment_from_torchrun_slurm_or_nothing():
    elastic = detect_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                                  "GROUP_RANK": "0", "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "1234"})
    assert elastic == ClusterEnvironment("torchelastic", 3, 1, 8, 4, 0, "10.1.1.1", 1234)
    slurm = detect_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
                                "SLURM_NNODES": "4", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train",
                                "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu3"})
    assert slurm == ClusterEnvironment("slurm", 5, 1, 8, 2, 2, "gpu07", 10000 + 4242 % 20000)
    assert detect_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).kind == "single"
    assert detect_environment({}).kind == "single"
    assert first_host("node001") == "node001" and first_host("a[3-5]-ib,b1") == "a3-ib"
    with pytest.raises(ValueError, match=r"RANK='x' is not an integer"):
        detect_environment({"RANK": "x", "WORLD_SIZE": "2"})


# -- start-up: torch's rendezvous names its events without inspect.stack() under our launchers --------
def test_frame_names_are_the_names_torch_gives_its_rendezvous_events():
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import get_method_name

    from trainer.engine.script_launch import _method_name

    def nested(levels: int, depth: int) -> tuple[str, str]:
        if levels:
            return nested(levels - 1, depth)
        return get_method_name(depth), _method_name(depth)

    for depth in (1, 2, 3, 5):  # 0 is the function itself
        theirs, ours = nested(4, depth)
        assert ours == theirs, depth
    assert _method_name(10_000) == get_method_name(10_000) == "no_method_name"


def _rendezvous_once() -> int:
    """One real single-node c10d rendezvous in this process (a TCPStore on a free port), as torchrun's
    agent does before it starts the workers; the world size it agreed on."""
    import uuid

    from torch.distributed.elastic.rendezvous import RendezvousParameters, registry

    handler = registry.get_rendezvous_handler(RendezvousParameters(
        backend="c10d", endpoint="localhost:0", run_id=str(uuid.uuid4()), min_nodes=1, max_nodes=1))
    try:
        return handler.next_rendezvous().world_size
    finally:
        handler.shutdown()


def test_the_rendezvous_does_not_read_the_stack_within_frame_named_events(monkeypatch):
    import inspect

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    from trainer.engine.script_launch import frame_named_rendezvous_events

    def read_stack(*args, **kwargs):
        raise AssertionError("inspect.stack() called")

    monkeypatch.setattr(inspect, "stack", read_stack)
    original = dynamic_rendezvous.get_method_name
    with pytest.raises(AssertionError, match=r"inspect.stack\(\) called"):  # what torch does on its own
        _rendezvous_once()
    with frame_named_rendezvous_events():
        assert _rendezvous_once() == 1
    assert dynamic_rendezvous.get_method_name is original
    with pytest.raises(RuntimeError), frame_named_rendezvous_events():
        raise RuntimeError("a failed launch puts torch's function back too")
    assert dynamic_rendezvous.get_method_name is original


def test_trainer_launch_starts_its_workers_without_reading_the_stack(tmp_path):
    """The ~0.5 CPU-s torchrun spends on inspect.stack() before its workers start is not spent by
    `trainer launch` (benchmarks/startup.py measures the effect)."""
    script = tmp_path / "hello.py"
    script.write_text("print('worker ran', flush=True)\n")
    code = ("import inspect, sys\n"
            "def read_stack(*args, **kwargs):\n"
            "    raise AssertionError('inspect.stack() called in the launcher')\n"
            "inspect.stack = read_stack\n"
            "from trainer.cli import main\n"
            f"sys.exit(main(['launch', '--cpu', '--num-processes', '1', {str(script)!r}]))\n")
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=200,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "worker ran" in result.stdout


EQUIVALENCE = textwrap.dedent(f"""
    import json, sys
    sys.path.insert(0, {str(ROOT)!r})
    from tests.strategies.test_ddp import _fit
    out = {{}}
    for k in (1, 2):
        weights, trainer = _fit(batch=2, k=k, use_num_items=False)
        out[k] = {{"weights": weights, "world": trainer.world_size, "steps": trainer.global_step}}
    if trainer.is_global_zero:
        json.dump(out, open(sys.argv[1], "w"))
""")


def test_two_launched_processes_with_b_each_equal_one_process_with_2b(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(EQUIVALENCE)
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--cpu",
                             str(script), str(tmp_path / "out.json")], capture_output=True, text=True, env=env,
                            timeout=200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    from tests.strategies.test_ddp import _fit

    launched = json.loads((tmp_path / "out.json").read_text())
    for k in (1, 2):
        weights, trainer = _fit(batch=4, k=k, use_num_items=False)
        assert launched[str(k)]["world"] == 2 and launched[str(k)]["steps"] == trainer.global_step
        for got, want in zip(launched[str(k)]["weights"], weights):
            assert torch.tensor(got) == pytest.approx(torch.tensor(want), abs=1e-6)


def test_two_machines_on_one_host_complete_a_run_together(tmp_path):
    from tests.helpers.distributed import free_port

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}
    port = str(free_port())
    machines = [subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-machines", "2",
                                  "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1",
                                  "--main-process-port", port, "--num-processes", "1", "--cpu", str(script), "{}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
                for rank in (0, 1)]
    outputs = [m.communicate(timeout=200) for m in machines]
    assert [m.returncode for m in machines] == [0, 0], [err for _, err in outputs]
    assert _rank_lines(outputs[0][0] + outputs[1][0]) == [
        f"rank={r} world=2 precision=32-true accum=1 steps=4 args=[]" for r in (0, 1)]


MISMATCH = textwrap.dedent("""
    import torch, torch.distributed as dist
    from trainer import Accelerator
    accelerator = Accelerator(cpu=True)
    t = torch.ones(3)
    if accelerator.process_index == 0:
        dist.all_reduce(t)      # rank 0 reduces ...
    else:
        dist.broadcast(t, 0)    # ... while rank 1 broadcasts: a bug that would hang until the timeout
""")


def test_debug_mode_names_a_mismatched_collective_instead_of_hanging(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH)
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "launch", "--debug", "--num-processes", "2",
                             "--cpu", str(script)], capture_output=True, text=True, env=env, timeout=100, cwd=tmp_path)
    assert result.returncode == 1
    assert "Detected mismatch between collectives" in result.stderr
    assert "ALLREDUCE" in result.stderr and "BROADCAST" in result.stderr


SLEEPER = textwrap.dedent("""
    import os, sys, time
    import torch
    from trainer import Accelerator
    accelerator = Accelerator(cpu=True)
    open(os.path.join(sys.argv[1], f"pid{accelerator.process_index}"), "w").write(str(os.getpid()))
    while True:
        accelerator.reduce(torch.ones(1))
        time.sleep(0.05)
""")


def test_ctrl_c_stops_every_worker(tmp_path):
    import signal
    import time

    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}
    launcher = subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--cpu",
                                 str(script), str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("pid*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("pid*")]
    assert len(pids) == 2, launcher.stderr.read() if launcher.poll() is not None else "workers did not start"
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + signal.SIGINT
    assert "stopped by SIGINT; every worker process was stopped" in err
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        # a zombie awaiting its parent is gone for our purpose; anything else is a live worker
        assert open(f"/proc/{pid}/stat").read().split()[2] == "Z", f"worker {pid} still runs after Ctrl-C"


def test_the_cli_imports_yaml_only_for_a_config_file(tmp_path):
    """`trainer launch` without a config file (flags only) starts without importing yaml: the
    launcher's own start-up counts against torchrun's (benchmarks/startup.py)."""
    code = ("import sys; from trainer.cli import launch, env, config_file; "
            "cfg = config_file.LaunchConfig(); assert 'yaml' not in sys.modules, 'imported at start'; "
            "path = config_file.save_config(cfg, sys.argv[1]); config_file.load_config(path); "
            "print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]  # and a file is still written and read with it
