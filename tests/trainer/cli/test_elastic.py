"""Elastic membership through `trainer launch --nnodes 1:2` (torchrun's c10d rendezvous): two agents on
one host, one process each. One agent is SIGKILLed mid-epoch: the other re-forms alone, resumes from
last.ckpt and trains the rest of the interrupted epoch; the agent started again joins, and the run
grows back to two processes and finishes. Every sample of each epoch is trained exactly once.

The rendezvous settings shorten torchrun's waits (a lost agent is noticed after 3 missed 1 s
heartbeats instead of 3 x 5 s; a round closes 3 s after the minimum joined instead of 30 s): with
torchrun's defaults, training resumed ~45-50 s after the kill, with these ~15 s (most of it starting
a new Python process on this 2-core machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.distributed import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SCRIPT = str(Path(__file__).with_name("elastic_script.py"))
RDZV_CONF = "last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=3"


class Agent:
    """One `trainer launch` agent whose output lines are collected, with the time each arrived."""

    def __init__(self, tmp_path: Path, port: int, lines: list) -> None:
        env = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml"), "ELASTIC_STEP_SLEEP": "0.5"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.cli", "launch", "--nnodes", "1:2", "--nproc-per-node", "1",
             "--max-restarts", "3", "--master-addr", "127.0.0.1", "--master-port", str(port), "--rdzv-conf",
             RDZV_CONF, SCRIPT, str(tmp_path / "run"), str(tmp_path / "trained.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()

    def _read(self, lines: list) -> None:
        for line in self.proc.stdout:
            lines.append((time.monotonic(), line.rstrip()))


def _wait_for(lines: list, predicate, after: float = 0.0, timeout: float = 150) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for at, line in list(lines):
            if at >= after and predicate(line):
                return at
        time.sleep(0.05)
    raise AssertionError("timed out; output so far:\n" + "\n".join(line for _, line in lines))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_lost_agent_shrinks_the_run_and_a_new_one_grows_it_back(tmp_path):
    port = free_port()
    lines: list = []
    first = Agent(tmp_path, port, lines)
    # the first agent hosts the rendezvous store (the "main machine"); the one killed is the other
    deadline = time.monotonic() + 60
    while not _listening(port):
        assert first.proc.poll() is None and time.monotonic() < deadline, "\n".join(line for _, line in lines)
        time.sleep(0.05)
    second = Agent(tmp_path, port, lines)
    agents = [first, second]
    try:
        _wait_for(lines, lambda line: line.startswith("step 3 epoch 0 world 2 "))
        second.proc.kill()  # SIGKILL: its worker dies with it (PR_SET_PDEATHSIG)
        killed_at = time.monotonic()
        resumed_at = _wait_for(lines, lambda line: " world 1 " in line, after=killed_at)
        print(f"training again {resumed_at - killed_at:.1f} s after the agent was lost")
        third = Agent(tmp_path, port, lines)
        agents.append(third)
        _wait_for(lines, lambda line: " world 2 " in line, after=resumed_at)
        assert first.proc.wait(timeout=120) == 0, "\n".join(line for _, line in lines)
        assert third.proc.wait(timeout=60) == 0, "\n".join(line for _, line in lines)
    finally:
        for agent in agents:
            if agent.proc.poll() is None:
                agent.proc.kill()
    trained = json.loads((tmp_path / "trained.json").read_text())
    worlds = [world for _, world, _ in trained]
    assert worlds[0] == 2 and 1 in worlds and worlds[-1] == 2, worlds  # 2 -> 1 -> 2
    for epoch in (0, 1):
        samples = sorted(i for e, _, ids in trained if e == epoch for i in ids)
        assert samples == list(range(40)), (epoch, samples)  # each sample once, none lost, none twice
