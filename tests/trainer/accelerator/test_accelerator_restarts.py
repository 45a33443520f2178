"""The Accelerator door's restart pattern (tests/trainer/accelerator/accelerator_restart_script.py): load_state when the
state exists, set_epoch on a seedable sampler, skip_first_batches past the trained batches,
save_state after each optimizer step. A run stopped mid-epoch and resumed ends bit-exact with an
uninterrupted one: in one process (stopped by an exception right after a save), and under
`trainer launch --max-restarts 1` with rank 1 SIGKILLed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainer.accelerator.accelerator_restart_script import Stop, train

SCRIPT = str(Path(__file__).with_name("accelerator_restart_script.py"))


@pytest.mark.parametrize("stop_at", [3, 10])  # inside epoch 0, inside epoch 1 (8 steps an epoch)
def test_stopped_and_resumed_with_load_state_equals_no_interruption(tmp_path, stop_at):
    reference = train(str(tmp_path / "reference"))
    with pytest.raises(Stop):
        train(str(tmp_path / "run"), kill_at=stop_at, in_process=True)
    resumed = train(str(tmp_path / "run"))
    assert resumed["steps"] == reference["steps"] == 16
    for name, value in reference["weights"].items():
        assert torch.equal(resumed["weights"][name], value), name


def _launch(tmp_path: Path, name: str, *args: str, restarts: int = 0) -> subprocess.Popen:
    environ = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}
    return subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--max-restarts",
                             str(restarts), SCRIPT, str(tmp_path / name), str(tmp_path / f"{name}.pt"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_killed_rank_restarted_by_the_launcher_resumes_with_load_state_bit_exact(tmp_path):
    reference = _launch(tmp_path, "reference")
    out = reference.communicate(timeout=200)[0]
    assert reference.returncode == 0, out
    killed = _launch(tmp_path, "killed", "5", restarts=1)  # rank 1 SIGKILLs itself after step 5's save, once
    out = killed.communicate(timeout=250)[0]
    assert killed.returncode == 0, out
    assert "done at step 8 attempt 1" in out, out  # 2 processes: 4 windows of 2 x 2 x 3 samples an epoch
    want = torch.load(tmp_path / "reference.pt", weights_only=True)
    got = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)
