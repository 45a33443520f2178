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


def _orders(state_dir: str | None, stop: tuple[int, int] | None = None, resume: bool = False) -> list:
    """The batches a shuffled prepared loader gives over 3 epochs of 3 batches, with random draws of
    its own per step; stopped right after save_state at ``stop`` (epoch, batch), or resumed from it
    Accelerate's way: load_state, the epoch and batch from the step count, skip_first_batches."""
    from torch.utils.data import DataLoader

    from trainer import Accelerator
    from trainer.utils import set_seed

    set_seed(3)
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(list(range(6 * accelerator.num_processes)), batch_size=2, shuffle=True))
    seen, start_epoch, skip = [], 0, 0
    if resume:
        accelerator.load_state(state_dir)
        trained = stop[0] * 3 + stop[1] + 1
        start_epoch, skip = divmod(trained, 3)
    for epoch in range(start_epoch, 3):
        resuming = resume and epoch == start_epoch
        batches = accelerator.skip_first_batches(loader, skip) if resuming else loader
        for i, batch in enumerate(batches, start=skip if resuming else 0):
            seen.append(batch.tolist())
            torch.rand(1)  # the step's own random draws
            if not resume and (epoch, i) == stop:
                accelerator.save_state(state_dir)
                return seen
    return seen


def _orders_resumed(state_dir: str, stop: tuple[int, int]) -> list:
    return _orders(state_dir, stop) + _orders(state_dir, stop, resume=True)


@pytest.mark.parametrize("stop", [(0, 0), (0, 2), (1, 1), (1, 2)])
def test_a_shuffled_loader_resumed_anywhere_gives_the_uninterrupted_order(tmp_path, stop):
    """Mid-epoch and at an epoch's last batch, with neither set_epoch nor a seedable sampler. A state
    saved at the last batch resumed into the next epoch replayed the finished epoch's order (or, before
    save_state kept the loaders' state, drew the resumed epoch's order anew)."""
    assert _orders_resumed(str(tmp_path / "state"), stop) == _orders(None)


def _orders_on_two(state_dir: str) -> list:
    return [_orders_resumed(f"{state_dir}_{epoch}_{batch}", (epoch, batch)) for epoch, batch in ((0, 2), (1, 0))] \
        + [_orders(None)]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_shuffled_loader_resumed_on_two_processes_gives_the_uninterrupted_order(tmp_path):
    from tests.helpers.distributed import run_distributed

    for resumed_at_boundary, resumed_inside, uninterrupted in run_distributed(
            _orders_on_two, world_size=2, timeout=150, state_dir=str(tmp_path / "state")):
        assert resumed_at_boundary == resumed_inside == uninterrupted
