"""SLURM auto-requeue: on the warning signal (SIGUSR1, as `#SBATCH --signal=USR1@90` sends it) every
rank saves last.ckpt at the same optimizer step, rank zero runs `scontrol requeue $SLURM_JOB_ID`, the
processes exit 0, and the requeued job (SLURM_RESTART_COUNT=1) run with the same command -- a
fit() without ckpt_path -- resumes there and ends on the uninterrupted run's weights. `scontrol` is a
stand-in on PATH that records its arguments. Ranks are started the way `srun` starts them
(SLURM_PROCID, SLURM_NTASKS, ...), each a real process in one gloo group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests import ROOT
from tests.helpers.distributed import free_port

SCRIPT = textwrap.dedent(f"""
    import os, sys, time
    sys.path.insert(0, {str(ROOT)!r})
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from trainer import Trainer, TrainModule, seed_everything
    from trainer.callbacks import Callback
    from trainer.strategies import SLURMEnvironment

    class Net(TrainModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    class Slow(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            print(f"step {{trainer.global_step}} rank {{trainer.global_rank}} pid {{os.getpid()}}", flush=True)
            time.sleep(float(os.environ.get("STEP_SLEEP", "0")))

    seed_everything(0)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)
    plugins = [SLURMEnvironment(auto_requeue=False)] if os.environ.get("REQUEUE") == "off" else None
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=sys.argv[1],
                      callbacks=[Slow()], plugins=plugins, accelerator="cpu")
    model = Net()
    trainer.fit(model, loader)   # the same command after the requeue: no ckpt_path
    if trainer.is_global_zero:
        torch.save({{k: v.clone() for k, v in model.state_dict().items()}}, sys.argv[2])
        print(f"done at global_step {{trainer.global_step}}", flush=True)
""")


def _slurm_env(tmp_path: Path, rank: int, ntasks: int, port: int, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        scontrol = bin_dir / "scontrol"
        scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
        scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
                "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": str(rank),
                "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_NNODES": "1",
                "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1", "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml"), **extra})
    return env


def _start(tmp_path: Path, name: str, ntasks: int, **extra: str) -> list[subprocess.Popen]:
    """``srun --ntasks=N python train.py RUN_DIR OUT`` on one host."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    port = free_port()
    return [subprocess.Popen([sys.executable, str(script), str(tmp_path / name), str(tmp_path / f"{name}.pt")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                             env=_slurm_env(tmp_path, rank, ntasks, port, **extra))
            for rank in range(ntasks)]


def _finish(procs: list[subprocess.Popen]) -> str:
    outs = [p.communicate(timeout=200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(outs)
    return "\n".join(outs)


def _wait_for_step(proc: subprocess.Popen, step: int) -> str:
    seen = ""
    while f"step {step} " not in seen:
        line = proc.stdout.readline()
        assert line, "the run ended before step %d:\n%s" % (step, seen)
        seen += line
    return seen


def _same_weights(a: Path, b: Path) -> bool:
    want, got = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("ntasks", [1, 2])
def test_the_warning_signal_saves_requeues_and_the_requeued_job_resumes_exactly(tmp_path, ntasks):
    _finish(_start(tmp_path, "reference", ntasks))
    assert not (tmp_path / "scontrol.log").exists()  # no signal, no requeue
    procs = _start(tmp_path, "run", ntasks, STEP_SLEEP="0.3")
    seen = _wait_for_step(procs[-1], 3)
    procs[-1].send_signal(signal.SIGUSR1)  # the last rank only: the others learn it through the agreement
    out = seen + _finish(procs)
    assert "Received SLURM's warning signal (SIGUSR1): saved" in out, out
    assert "requeued job 4242 (`scontrol requeue 4242`)" in out, out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # once, by rank zero
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "run.pt").exists()  # stopped before the end
    resumed = _finish(_start(tmp_path, "run", ntasks, SLURM_RESTART_COUNT="1"))  # the same command, requeued
    assert "Resuming from" in resumed and "last.ckpt" in resumed, resumed
    assert "done at global_step 32" in resumed or "done at global_step 16" in resumed, resumed
    assert _same_weights(tmp_path / "reference.pt", tmp_path / "run.pt")
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_auto_requeue_off_leaves_the_signal_alone(tmp_path):
    (proc,) = _start(tmp_path, "run", 1, STEP_SLEEP="0.3", REQUEUE="off")
    _wait_for_step(proc, 2)
    proc.send_signal(signal.SIGUSR1)  # its default action: the process ends, nothing saved, no requeue
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGUSR1
    assert not (tmp_path / "scontrol.log").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_slurm_environment_settings_and_where_it_applies():
    from trainer import Trainer
    from trainer.strategies import SLURMEnvironment

    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train"}
    assert SLURMEnvironment().requeues(env) and not SLURMEnvironment(auto_requeue=False).requeues(env)
    assert not SLURMEnvironment().requeues({})  # not under SLURM
    assert not SLURMEnvironment().requeues({**env, "SLURM_JOB_NAME": "bash"})  # an interactive shell
    assert SLURMEnvironment.requeued({**env, "SLURM_RESTART_COUNT": "1"}) and not SLURMEnvironment.requeued(env)
    assert SLURMEnvironment(requeue_signal=signal.SIGUSR2).requeue_signal is signal.SIGUSR2
    assert Trainer(plugins=[SLURMEnvironment(auto_requeue=False)], logger=False).slurm_environment.auto_requeue is False
    with pytest.raises(TypeError, match=r"auto_requeue='no'\): expected True or False"):
        SLURMEnvironment(auto_requeue="no")
    with pytest.raises(ValueError, match=r"requeue_signal=SIGTERM\): that signal cannot be caught or already means"):
        SLURMEnvironment(requeue_signal=signal.SIGTERM)
    with pytest.raises(ValueError, match=r"requeue_signal=999\): not a signal number"):
        SLURMEnvironment(requeue_signal=999)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_launch_passes_the_warning_signal_to_its_workers(tmp_path):
    # `srun trainer launch ...`: SLURM signals the launcher (the task); torchrun's workers must save and requeue
    restart_script = Path(__file__).parents[1] / "trainer" / "cli" / "restart_script.py"
    env = _slurm_env(tmp_path, 0, 1, free_port(), RESTART_SCRIPT_STEP_SLEEP="0.2")
    for key in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NNODES", "MASTER_ADDR",
                "MASTER_PORT"):
        env.pop(key)  # one task: the launcher; its workers take their ranks from torchrun
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", str(restart_script),
                             str(tmp_path / "run"), str(tmp_path / "run.pt")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    seen = ""
    while "training pid" not in seen:
        line = proc.stdout.readline()
        assert line, seen
        seen += line
    proc.send_signal(signal.SIGUSR1)
    out = seen + proc.communicate(timeout=200)[0]
    assert proc.returncode == 0, out
    assert "Received SLURM's warning signal (SIGUSR1): saved" in out and "requeued job 4242" in out, out
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists() and not (tmp_path / "run.pt").exists()
