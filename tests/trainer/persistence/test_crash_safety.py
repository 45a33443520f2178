"""Real crashes: SIGKILL at random moments (including in the middle of writing a checkpoint),
SIGTERM preemption, damaged files, and checkpoints that must not be unpickled."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.strategies.checkpoint_io import CorruptCheckpointError, UnsafeCheckpointError, atomic_save, safe_load
from trainer import Trainer
from tests.helpers import BoringModel, regression_loader

SCRIPT = str(Path(__file__).with_name("resume_script.py"))


def _start(run_dir: Path, out: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, str(run_dir), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})


def _start_reference(tmp_path: Path) -> subprocess.Popen:
    """The uninterrupted run, in a directory of its own: started first, it runs beside the killed ones
    (most of each run is a new interpreter importing torch, so the two overlap instead of queueing)."""
    return _start(tmp_path / "reference", tmp_path / "reference.pt")


def _reference(tmp_path: Path, proc: subprocess.Popen) -> dict:
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    return torch.load(tmp_path / "reference.pt", weights_only=True)


def _kill_when_saving(proc: subprocess.Popen, ckpt_dir: Path) -> bool:
    """SIGKILL ``proc`` while a checkpoint write is in flight (its temporary file exists). False if
    the run ended first."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt_dir.exists() and any(n.startswith(".tmp-") for n in os.listdir(ckpt_dir)):
            proc.send_signal(signal.SIGKILL)
            return True
        time.sleep(0.001)
    return False


@pytest.mark.timeout(600)
def test_sigkill_at_random_moments_and_mid_save_then_resume_gives_the_uninterrupted_weights(tmp_path):
    reference = _start_reference(tmp_path)
    run_dir, out = tmp_path / "run", tmp_path / "final.pt"
    ckpt_dir = run_dir / "checkpoints"
    rng = random.Random(0)
    mid_save_kills = kills = 0
    for attempt in range(5):
        # every save sleeps 30 ms between writing the temporary file and renaming it into place
        proc = _start(run_dir, out, TRAINER_TEST_SAVE_DELAY="0.03")
        while proc.stdout.readline().strip() not in ("training", ""):  # "" if it finished first
            pass
        if attempt % 2:  # a random moment
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
        elif not _kill_when_saving(proc, ckpt_dir):  # in the middle of a write
            break
        proc.wait(timeout=30)
        kills += 1
        names = os.listdir(ckpt_dir)
        mid_save_kills += attempt % 2 == 0 and any(n.startswith(".tmp-") for n in names)
        if "last.ckpt" in names:
            safe_load(str(ckpt_dir / "last.ckpt"))  # whatever moment the kill hit, last.ckpt is whole
    proc = _start(run_dir, out)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output
    assert kills == 5 and mid_save_kills == 3  # every kill landed; three of them with a write in flight
    expected = _reference(tmp_path, reference)
    got = torch.load(out, weights_only=True)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not [n for n in os.listdir(ckpt_dir) if n.startswith(".tmp-")]  # the killed writers' leftovers are gone


@pytest.mark.timeout(300)
def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path):
    reference = _start_reference(tmp_path)
    run_dir, out = tmp_path / "run", tmp_path / "final.pt"
    proc = _start(run_dir, out, TRAINER_TEST_SAVE_DELAY="0.02")
    seen = []  # status lines (the precision chosen, the model summary) come first; then training starts
    while len(seen) < 40 and (not seen or seen[-1].strip() != "training"):
        seen.append(proc.stdout.readline())
    assert seen[-1].strip() == "training" and any("no checkpoint found" in line for line in seen), seen
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "Received SIGTERM: saved" in output and "ckpt_path='last'" in output
    assert not out.exists()  # it stopped before the end
    proc = _start(run_dir, out)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0 and "Resuming from" in output, output
    expected = _reference(tmp_path, reference)
    got = torch.load(out, weights_only=True)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"format_version": 1, "state_dict": {}, "payload": _Evil()}, f)
    with pytest.raises(UnsafeCheckpointError, match=r"contains a pickled Python object.*would run code from the file"):
        safe_load(str(path))
    torch.save({"format_version": 1, "state_dict": {}, "payload": _Evil()}, tmp_path / "evil2.ckpt")
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    with pytest.raises(UnsafeCheckpointError, match=r"Refusing to load .*the global posix\.system"):
        trainer.fit(BoringModel(), regression_loader(), ckpt_path=str(tmp_path / "evil2.ckpt"))
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_a_damaged_last_is_reported_and_resume_falls_back_to_the_newest_whole_checkpoint(tmp_path, damage):
    from trainer.callbacks import Callback, ModelCheckpoint

    first = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                    callbacks=[ModelCheckpoint(save_top_k=-1, save_last=True)])
    first.fit(BoringModel(), regression_loader())
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpt_dir)) == ["epoch=0-step=8.ckpt", "epoch=1-step=16.ckpt", "last.ckpt"]
    last = ckpt_dir / "last.ckpt"
    data = last.read_bytes()
    last.unlink()  # last.ckpt is a hard link to epoch 1's file: damage this name only
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else random.Random(0).randbytes(len(data)))
    with pytest.raises(CorruptCheckpointError, match=r"(truncated or|is) damaged.*[Uu]se an earlier checkpoint"):
        safe_load(str(last))
    started = []

    class Start(Callback):
        def on_train_start(self, trainer, module):
            started.append(trainer.global_step)

    again = Trainer(max_epochs=3, logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                    enable_checkpointing=False, callbacks=[Start()])
    with pytest.warns(UserWarning, match=r"skipping a damaged checkpoint.*last\.ckpt"):
        again.fit(BoringModel(), regression_loader(), ckpt_path="last")
    assert started == [16]  # epoch 1's end (not epoch 0's, not a fresh start)
    assert again.global_step == 24


def test_atomic_save_never_leaves_a_partial_file_under_the_real_name(tmp_path):
    path = tmp_path / "x.ckpt"
    atomic_save({"a": torch.ones(3)}, str(path))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": torch.zeros(3), "b": Boom()}, str(path))
    assert torch.equal(safe_load(str(path))["a"], torch.ones(3))  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["x.ckpt"]  # and the temporary file is gone


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_atomic_save_starts_the_disk_writeback_chunk_by_chunk_and_the_file_loads_whole(tmp_path, monkeypatch):
    import trainer.strategies.checkpoint_io as checkpoint_io

    advised = []
    real = os.posix_fadvise
    monkeypatch.setattr(checkpoint_io._WritebackFile, "CHUNK", 64 << 10)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: (advised.append(
        (os.fstat(fd).st_size, advice)), real(fd, offset, length, advice))[1])
    content = {f"w{i}": torch.randn(128, 128) for i in range(8)}  # 8 x 64 KB
    atomic_save(content, str(tmp_path / "big.ckpt"))
    loaded = safe_load(str(tmp_path / "big.ckpt"))
    assert loaded.keys() == content.keys() and all(torch.equal(loaded[k], v) for k, v in content.items())
    # the kernel was asked to write back as the file grew, not once at the end
    assert len(advised) >= 7 and all(advice == os.POSIX_FADV_DONTNEED for _, advice in advised)
    sizes = [size for size, _ in advised]
    assert sizes == sorted(sizes) and sizes[0] < os.path.getsize(tmp_path / "big.ckpt") / 2


def test_atomic_save_without_posix_fadvise_writes_through_torch_to_the_path(tmp_path, monkeypatch):
    import trainer.strategies.checkpoint_io as checkpoint_io

    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    monkeypatch.setattr(checkpoint_io._WritebackFile, "write", lambda self, data: pytest.fail("not used here"))
    atomic_save({"a": torch.arange(5)}, str(tmp_path / "x.ckpt"))
    assert torch.equal(safe_load(str(tmp_path / "x.ckpt"))["a"], torch.arange(5))


SWAP_SCRIPT = str(Path(__file__).with_name("swap_kill_script.py"))


def _swap_run(*args: str, kill: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINER_TEST_KILL_IN_SWAP": "1"} if kill else dict(os.environ)
    env.pop("TRAINER_TEST_KILL_IN_SWAP", None) if not kill else None
    return subprocess.run([sys.executable, SWAP_SCRIPT, *args], capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.timeout(500)
@pytest.mark.parametrize("kind", ["trainer", "trainer-async"])
def test_a_kill_between_the_two_renames_of_a_sharded_save_loses_nothing(tmp_path, kind):
    # FSDP writes last.ckpt (a directory) after epoch 0; after epoch 1 the process is SIGKILLed with
    # the old last.ckpt moved aside and the new one not yet renamed in: no checkpoint has its real name.
    # "trainer-async": ModelCheckpoint(async_save=True), the kill lands in its background writer
    killed = _swap_run(kind, str(tmp_path), "2", kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "last.ckpt" not in names and any(".new." in n for n in names) and any(".old." in n for n in names)
    resumed = _swap_run("trainer", str(tmp_path), "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "Recovered" in resumed.stdout and "Resuming from" in resumed.stdout
    assert "at global_step 16 " in resumed.stdout  # the newer checkpoint (epoch 1's), not epoch 0's, not scratch
    assert "finished at global_step 24" in resumed.stdout
    assert os.listdir(tmp_path / "checkpoints") == ["last.ckpt"]  # the leftovers are cleaned


@pytest.mark.timeout(300)
def test_a_kill_between_the_two_renames_of_save_state_loses_nothing(tmp_path):
    state_dir = str(tmp_path / "state")
    killed = _swap_run("accelerator", state_dir, "2", kill=True)  # the second save_state is killed in its swap
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not os.path.exists(state_dir)
    loaded = _swap_run("accelerator", state_dir, "0")  # only load_state
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded save 2" in loaded.stdout
    assert os.listdir(tmp_path) == ["state"]
