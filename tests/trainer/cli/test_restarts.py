"""`trainer launch --max-restarts N` with fit(ckpt_path="last"): a rank SIGKILLed mid-epoch is
restarted with its group and the run ends with exactly the uninterrupted weights; SIGTERM of the
launcher exits 0 once every worker saved; SIGKILL of the launcher takes its workers with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
SCRIPT = str(Path(__file__).with_name("restart_script.py"))


def _launch(tmp_path: Path, name: str, *script_args: str, restarts: int = 0, **env: str) -> subprocess.Popen:
    environ = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml"), **env}
    return subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2",
                             "--max-restarts", str(restarts), SCRIPT, str(tmp_path / name),
                             str(tmp_path / f"{name}.pt"), *script_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ, cwd=tmp_path)


def test_a_killed_rank_is_restarted_and_the_run_ends_bit_exact(tmp_path):
    reference = _launch(tmp_path, "reference")
    out = reference.communicate(timeout=200)[0]
    assert reference.returncode == 0, out
    killed = _launch(tmp_path, "killed", "5", restarts=1)  # rank 1 SIGKILLs itself at step 5, once
    out = killed.communicate(timeout=250)[0]
    assert killed.returncode == 0, out
    assert "at global_step 5" in out and "done at global_step 16 attempt 1" in out, out
    want = torch.load(tmp_path / "reference.pt", weights_only=True)
    got = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)


def _wait_for_workers(proc: subprocess.Popen) -> list[int]:
    pids: list[int] = []
    while len(pids) < 1:
        line = proc.stdout.readline()
        assert line, "the launch ended before training"
        if line.startswith("training pid"):
            pids.append(int(line.split()[-1]))
    return pids


def test_sigterm_of_the_launcher_saves_and_exits_zero(tmp_path):
    proc = _launch(tmp_path, "run", RESTART_SCRIPT_STEP_SLEEP="0.2")
    _wait_for_workers(proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert "Received SIGTERM: saved" in out and "all 2 workers saved a checkpoint" in out, out
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_sigkill_of_the_launcher_kills_its_workers(tmp_path):
    # output to a file, as from a terminal or a batch system: a worker writing to a pipe nobody reads
    # any more would die of SIGPIPE and hide the problem
    log = tmp_path / "launch.log"
    environ = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml"), "RESTART_SCRIPT_STEP_SLEEP": "3"}  # 48 s of training
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", SCRIPT,
                                 str(tmp_path / "run"), str(tmp_path / "run.pt")], stdout=f, stderr=subprocess.STDOUT,
                                env=environ, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while "training pid" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    time.sleep(0.5)
    pids = [int(line.split()[-1]) for line in log.read_text().splitlines() if line.startswith("training pid")]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10  # well before the workers would finish on their own
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.2)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their SIGKILLed launcher"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
