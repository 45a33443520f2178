"""examples/cli_regression.{py,yaml}: a whole run driven by its config file alone (`trainer fit --config`), on 1 and
2 processes, then `trainer test` on its last checkpoint; the resolved config lands in the log directory and in
each checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("jsonargparse")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run_example(tmp_path, *extra, stage="fit", module=False):
    # the console script, or `python -m trainer`: a run on several processes starts it again per rank
    script = Path(sys.executable).parent / "trainer"
    command = [str(script)] if script.exists() and not module else [sys.executable, "-m", "trainer"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*command, stage, "--config", "cli_regression.yaml",
                           "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir",
                           str(tmp_path), *extra], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=300)


def test_the_example_runs_from_its_config_alone_and_saves_the_resolved_config(tmp_path):
    done = _run_example(tmp_path, "--trainer.max_epochs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "lightning_logs" / "version_0"  # the CSVLogger's run folder; the checkpoints go in it (Lightning's)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["seed_everything"] == 7  # the override, the file
    assert saved["model"]["class_path"] == "cli_regression.Regressor" and saved["data"]["init_args"]["batch_size"] == 32
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["loops"]["current_epoch"] == 1  # written at the second epoch's end (epochs count from 0)
    assert yaml.safe_load(last["cli_config"]) == saved
    tested = _run_example(tmp_path / "t", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), stage="test")
    assert tested.returncode == 0 and "test_loss" in tested.stdout + tested.stderr, tested.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("module", [False, True], ids=["trainer", "python -m trainer"])
def test_the_example_on_two_processes(tmp_path, module):
    done = _run_example(tmp_path, "--trainer.max_epochs", "1", "--trainer.strategy", "ddp", "--trainer.devices", "2",
                        module=module)
    assert done.returncode == 0, done.stderr[-3000:]
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()
    assert torch.load(last, weights_only=True)["metadata"]["world_size"] == 2
