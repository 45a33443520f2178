"""`trainer test`: the built-in end-to-end check, launched through torchrun under the current
config, passes here on 2 CPU processes and fails loudly (non-zero exit, the failing check named)
when something is broken."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainer.cli import selftest

pytestmark = pytest.mark.timeout(240)
CHECKS = [label for label, _ in selftest.SelfTest.CHECKS]


def _trainer_test(tmp_path, *flags, env=None, config=None):
    environ = {**os.environ, "TRAINER_CONFIG_FILE": str(tmp_path / "config.yaml"), **(env or {})}
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
    return subprocess.run([sys.executable, "-m", "trainer.cli", "test", *flags], capture_output=True, text=True,
                          env=environ, timeout=200, cwd=tmp_path)


def test_passes_on_two_cpu_processes_with_the_config_files_settings(tmp_path):
    config = "num_processes: 2\ndevice: cpu\nmixed_precision: bf16\ngradient_accumulation_steps: 3\n"
    result = _trainer_test(tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("  PASS")] == [c.split()[0] for c in CHECKS]
    assert "2 process(es), backend gloo, DDPStrategy" in result.stdout
    assert "bf16-mixed: matmuls in bfloat16" in result.stdout
    assert "3 micro-batches equal one big batch" in result.stdout
    assert lines[-1].startswith("trainer test: PASSED (all 8 checks; 2 process(es), cpu, bf16-mixed")


def test_flags_override_the_config_file(tmp_path):
    result = _trainer_test(tmp_path, "--num-processes", "1", "--mixed-precision", "fp16",
                           config="num_processes: 2\ndevice: cpu\n")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (all 8 checks; 1 process(es), cpu, 16-mixed" in result.stdout


def test_a_broken_network_setting_fails_with_the_reason_and_a_nonzero_exit(tmp_path):
    result = _trainer_test(tmp_path, "--num-processes", "2", "--cpu", env={"GLOO_SOCKET_IFNAME": "nosuchif0"})
    assert result.returncode == 1
    assert "FAIL  process group" in result.stderr and "nosuchif0" in result.stderr
    assert "trainer test: FAILED" in result.stderr and "PASSED" not in result.stdout


def test_bad_settings_exit_2_before_launching(tmp_path):
    result = _trainer_test(tmp_path, "--mixed-precision", "fp8")
    assert result.returncode == 2 and "fp8" in result.stderr


def test_a_failing_check_is_reported_with_its_rank_and_the_verdict_fails(monkeypatch, capsys):
    """One process, in this interpreter: a check that raises is a FAIL line, the others still run."""
    def broken(self):
        raise AssertionError("deliberately broken")

    monkeypatch.setattr(selftest.SelfTest, "broken", broken, raising=False)
    monkeypatch.setattr(selftest.SelfTest, "CHECKS", (*selftest.SelfTest.CHECKS[:2], ("broken", "broken"),
                                                     *selftest.SelfTest.CHECKS[2:]))
    monkeypatch.delenv("TRAINER_LAUNCH_SETTINGS", raising=False)
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert selftest.main() == 1
    out = capsys.readouterr().out
    assert "  FAIL  broken              rank 0: AssertionError: deliberately broken" in out
    assert out.count("  PASS") == 8
    assert "trainer test: FAILED (1 of 9 checks failed" in out


def test_passes_with_the_configured_sharded_strategy(tmp_path):
    config = ("num_processes: 2\ndevice: cpu\nmixed_precision: bf16\nstrategy: fsdp\n"
              "fsdp:\n  auto_wrap_policy: none\n")
    result = _trainer_test(tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend gloo, FSDPStrategy" in result.stdout and "bf16-mixed: matmuls in bfloat16" in result.stdout
    assert "save_state / load_state restores the weights exactly" in result.stdout
    assert "PASSED (all 8 checks; 2 process(es), cpu, bf16-mixed, FSDPStrategy)" in result.stdout


@pytest.mark.timeout(400)
def test_passes_with_deepspeed_zero_3_from_the_config_file(tmp_path):
    pytest.importorskip("deepspeed")
    config = "num_processes: 2\ndevice: cpu\nmixed_precision: bf16\nstrategy: deepspeed\ndeepspeed:\n  zero_stage: 3\n"
    result = _trainer_test(tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (all 8 checks; 2 process(es), cpu, bf16-mixed, DeepSpeedStrategy)" in result.stdout


def test_a_wrong_result_fails_under_python_O(tmp_path):
    """The checks do not rely on ``assert``: with optimisations on (``python -O``, which strips
    asserts), a result outside the tolerance is still a FAIL and the verdict still fails."""
    script = ("import sys\n"
              "from trainer.cli import selftest\n"
              "assert False, 'python -O strips this'\n"
              "init = selftest.SelfTest.__init__\n"
              "def strict(self, accelerator):\n"
              "    init(self, accelerator)\n"
              "    self.tolerance = -1.0  # no difference can pass\n"
              "selftest.SelfTest.__init__ = strict\n"
              "sys.exit(selftest.main())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TRAINER_LAUNCH_SETTINGS")}
    result = subprocess.run([sys.executable, "-O", "-c", script], capture_output=True, text=True, env=env,
                            timeout=200, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  gradient averaging" in result.stdout and "CheckFailed: weights differ" in result.stdout
    assert "trainer test: FAILED (2 of 8 checks failed" in result.stdout
