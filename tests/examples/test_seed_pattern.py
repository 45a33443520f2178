"""The seed's hand-written Accelerate loop (DeepSpeed ZeRO-2, bf16, accumulation 4, W&B), with only
its imports changed, runs to completion under `trainer launch --num-processes 2`, W&B offline."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers.wandb_log import read_run
from tests import ROOT

pytest.importorskip("deepspeed")
pytest.importorskip("wandb")


def _default_extensions_dir() -> str:
    """Where torch builds JIT extensions when TORCH_EXTENSIONS_DIR is unset (as torch's cpp_extension)."""
    from torch.utils.cpp_extension import get_default_build_root

    kind = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
            f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    return os.path.join(get_default_build_root(),
                        f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{kind}")


@pytest.mark.timeout(400)
def test_seed_pattern_runs_under_trainer_launch(tmp_path):
    source = (ROOT / "examples" / "seed_pattern.py").read_text()
    assert "from trainer import Accelerator, DeepSpeedPlugin" in source and "from trainer.utils import set_seed" in source
    # HOME is a fresh directory (W&B writes there); DeepSpeed's compiled ops stay in the usual cache
    # so the test does not pay their JIT compile (about a minute) on every run.
    extensions = os.environ.get("TORCH_EXTENSIONS_DIR") or _default_extensions_dir()
    env = {**os.environ, "HOME": str(tmp_path), "WANDB_SILENT": "true", "TRAINER_CONFIG_FILE": str(tmp_path / "none"),
           "TORCH_EXTENSIONS_DIR": extensions}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "--cpu",
                             str(ROOT / "examples" / "seed_pattern.py"), "--output-dir", str(out), "--epochs", "2"],
                            capture_output=True, text=True, env=env, timeout=380, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "done: 8 optimizer steps" in result.stdout
    losses = [float(v) for v in re.findall(r"epoch \d: mean loss ([\d.]+)", result.stdout)]
    assert len(losses) == 2 and losses[-1] < losses[0]
    for epoch in range(2):  # save_state wrote the engine's shards and the loop state
        assert (out / f"checkpoint-{epoch}" / "meta.ckpt").is_file()
    from safetensors.torch import load_file

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    model.load_state_dict(load_file(str(out / "final_model" / "model.safetensors")))  # plain weights
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1  # rank zero only
    record = read_run(runs[0])
    assert [h["_step"] for h in record["history"] if "train_loss" in h] == list(range(1, 9))
    assert record["config"]["lr"] == 0.01
