"""`trainer env`: versions, devices, config file and environment, as text and as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import trainer
from trainer import cli
from trainer.cli import env as env_command
from trainer.cli.config_file import LaunchConfig, save_config


@pytest.fixture(scope="module", autouse=True)
def console_runs(tmp_path_factory):
    """`trainer --help` and `trainer env` through the installed console script, in fresh processes.

    Both start before this module's first test and run while the in-process tests do, so the
    two torch imports they pay cost little wall time; the last tests read their results.
    """
    script = Path(sys.executable).parent / "trainer"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "trainer.cli"]
    path = save_config(LaunchConfig(mixed_precision="bf16"), tmp_path_factory.mktemp("cfg") / "cfg.yaml")
    env = {**os.environ, "TRAINER_CONFIG_FILE": str(path), "RANK": "1"}
    processes = {name: subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env)
                 for name, args in (("help", ["--help"]), ("env", ["env"]))}
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    """Wait for a console run; return (exit code, stdout, stderr)."""
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


@pytest.fixture
def clean_env(tmp_path, monkeypatch) -> Path:
    """No launcher variables, a fresh HOME; returns the default config file location."""
    for name in [*env_command.ENV_VARS, *(n for n in os.environ if n.startswith("SLURM_"))]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home" / ".config" / "trainer" / "default_config.yaml"


def run_env(capsys, *argv: str) -> str:
    assert cli.main(["env", *argv]) == 0
    return capsys.readouterr().out


def test_text_report_has_what_a_bug_report_needs(clean_env, capsys):
    out = run_env(capsys)
    for line in (f"trainer version:        {trainer.__version__}",
                 f"Python:                 {platform.python_version()}",
                 f"Platform:               {platform.platform()}",
                 f"torch:                  {torch.__version__} (",
                 "CUDA available:         ", "MPS available:          ",
                 f"CPUs:                   {os.cpu_count()}",
                 f"Config file:            {clean_env} (none)",
                 "  RANK:                 unset", "  CUDA_VISIBLE_DEVICES: unset", "  SLURM_* count:        0"):
        assert line in out
    for name in env_command.INTEGRATIONS:
        assert f"  {name}:" in out
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    assert f"({build} build)" in out or "ROCm" in out


def test_json_parses_and_reports_environment_variables(clean_env, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    info = json.loads(run_env(capsys, "--json"))
    assert info["trainer"] == trainer.__version__ and info["python"] == platform.python_version()
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["cuda_available"] == torch.cuda.is_available()
    assert info["torch"]["cuda_device_count"] == len(info["torch"]["cuda_devices"])
    assert isinstance(info["torch"]["mps_available"], bool) and info["cpu_count"] == os.cpu_count()
    assert set(info["integrations"]) == set(env_command.INTEGRATIONS)
    environment = info["environment"]
    assert (environment["RANK"], environment["MASTER_ADDR"], environment["SLURM_* count"]) == ("3", "10.0.0.1", 2)
    assert environment["WORLD_SIZE"] is None
    assert info["config_file"] == {"path": str(clean_env), "exists": False, "contents": None, "error": None}


def test_config_file_contents_are_reported(clean_env, capsys, monkeypatch, tmp_path):
    path = save_config(LaunchConfig(num_processes=2, strategy="deepspeed", deepspeed={"zero_stage": 3}),
                       tmp_path / "cfg.yaml")
    monkeypatch.setenv("TRAINER_CONFIG_FILE", str(path))
    out = run_env(capsys)
    assert f"Config file:            {path}\n" in out
    assert "  num_processes: 2\n" in out and "  deepspeed:\n    zero_stage: 3\n" in out
    assert f"  TRAINER_CONFIG_FILE:  {path}" in out
    info = json.loads(run_env(capsys, "--json"))
    assert info["config_file"]["contents"]["deepspeed"]["zero_stage"] == 3 and info["config_file"]["error"] is None


def test_invalid_config_file_is_reported_not_raised(clean_env, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_processes: 0\n")
    out = run_env(capsys, "--config-file", str(bad))
    assert "  num_processes: 0\n" in out and "  invalid: Config file" in out and "expected a whole number" in out


def test_integrations_come_from_metadata_without_importing(clean_env, capsys, monkeypatch):
    real_version = metadata.version

    def fake_version(name: str) -> str:
        if name in ("wandb", "mlflow-skinny"):
            return {"wandb": "0.17.1", "mlflow-skinny": "2.11.0"}[name]
        if name in ("mlflow", "deepspeed"):
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", fake_version)
    before = set(sys.modules)
    info = json.loads(run_env(capsys, "--json"))
    assert info["integrations"]["wandb"] == "0.17.1"
    assert info["integrations"]["mlflow"] == "2.11.0"  # mlflow-skinny counts as mlflow
    assert info["integrations"]["deepspeed"] is None
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in env_command.INTEGRATIONS}


def test_console_script_help_lists_the_commands(console_runs):
    code, out, err = finish(console_runs["help"])
    assert code == 0, err
    for command in ("config", "env"):
        assert f"    {command} " in out


def test_console_script_env(console_runs):
    """The installed `trainer env` runs in a fresh process, with a config file from the environment."""
    code, out, err = finish(console_runs["env"])
    assert code == 0, err
    assert f"torch:                  {torch.__version__}" in out
    assert "  mixed_precision: bf16" in out and "  RANK:                 1" in out
