"""Ctrl-C (issue 27, point 4): one line per process instead of a traceback per process, with the resume
advice SIGTERM prints (the newest checkpoint, the call that continues), in one process and under
`trainer launch` on two, where the terminal's SIGINT reaches the launcher and every worker at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import ROOT

SCRIPT = textwrap.dedent(f"""
    import os, signal, sys, time
    sys.path.insert(0, {str(ROOT)!r})
    from trainer import Trainer
    from trainer.callbacks import Callback, ModelCheckpoint
    from tests.helpers import BoringModel, regression_loader

    class CtrlC(Callback):  # one process: the interrupt arrives at step 3, as from a terminal
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3 and os.environ.get("SELF_INTERRUPT"):
                os.kill(os.getpid(), signal.SIGINT)
            if trainer.global_step == 3:
                open(os.path.join(os.environ["MARKERS"], f"rank{{trainer.global_rank}}"), "w").close()
            time.sleep(0.02)

    checkpoint = ModelCheckpoint(dirpath="ckpt", every_n_train_steps=2, save_last=True)
    Trainer(max_epochs=10000, logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[CtrlC(), checkpoint]).fit(BoringModel(), regression_loader(32, 4), ckpt_path="last")
""")


def _as_from_a_terminal() -> None:
    """In the child before it runs: SIGINT delivered and at its default, as a terminal's job has it. An ignored or
    blocked SIGINT is inherited across exec, and the child would then train its 10000 epochs; a CI run once saw
    that (no line printed, 120 s timeout) after other tests had run in the same pytest worker."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _write(tmp_path: Path) -> dict:
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "markers").mkdir()
    return {**os.environ, "MARKERS": str(tmp_path / "markers"), "TRAINER_CONFIG_FILE": str(tmp_path / "none.yaml")}


def test_one_process_prints_one_line_with_the_checkpoint_to_continue_from(tmp_path):
    env = {**_write(tmp_path), "SELF_INTERRUPT": "1"}
    run = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         preexec_fn=_as_from_a_terminal)
    assert run.returncode in (-signal.SIGINT, 128 + signal.SIGINT), (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if "Interrupted" in line]
    assert lines == [f"Interrupted (Ctrl-C) during fit at global_step 3, epoch 0. The newest checkpoint is "
                     f"{tmp_path / 'ckpt' / 'last.ckpt'}: run the same command with trainer.fit(..., "
                     "ckpt_path='last') to continue from it."], run.stderr[-2000:]


def test_an_interrupt_a_script_catches_is_still_a_keyboard_interrupt(tmp_path, make_trainer, capsys):
    from tests.helpers import BoringModel, regression_loader
    from trainer.callbacks import Callback

    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            raise KeyboardInterrupt

    trainer = make_trainer(max_epochs=1, callbacks=[CtrlC()], enable_checkpointing=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(BoringModel(), regression_loader())
    assert trainer.interrupted
    assert capsys.readouterr().err.strip() == ("Interrupted (Ctrl-C) during fit at global_step 1, epoch 0. No checkpoint "
                                                "was written yet: running again starts over.")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_trainer_launch_prints_one_line_per_rank(tmp_path):
    env = _write(tmp_path)
    launcher = subprocess.Popen([sys.executable, "-m", "trainer.cli", "launch", "--num-processes", "2", "train.py"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True,  # its own process group, as a terminal's job
                                preexec_fn=_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 180
        while len(os.listdir(tmp_path / "markers")) < 2 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 128 + signal.SIGINT, out[-3000:]
    assert "Traceback" not in out and "closing signal" not in out, out[-3000:]
    lines = sorted(line for line in out.splitlines() if "Interrupted (Ctrl-C)" in line)
    assert len(lines) == 2 and lines[0].startswith("rank 0: Interrupted (Ctrl-C) during fit at global_step ") \
        and lines[1].startswith("rank 1: Interrupted (Ctrl-C) during fit at global_step "), out[-3000:]
    assert f"The newest checkpoint is {tmp_path / 'ckpt' / 'last.ckpt'}: run the same command" in lines[0]
    assert "trainer launch: stopped by SIGINT; every worker process was stopped." in out
