"""The collective timeout: seconds or a timedelta in code, collective_timeout from `trainer launch`
(flag or config file), else 600 s, the figure the README gives."""

from __future__ import annotations

import datetime
import json

import pytest

from trainer.cli.config_file import LaunchConfig
from trainer.cli.launch import worker_settings
from trainer.strategies import DDPStrategy
from trainer.strategies.failures import collective_name, is_collective_failure


def test_default_is_ten_minutes_and_code_wins(monkeypatch):
    assert DDPStrategy().timeout == datetime.timedelta(seconds=600)
    monkeypatch.setenv("TRAINER_LAUNCH_SETTINGS", json.dumps(worker_settings(LaunchConfig(collective_timeout=30))))
    assert DDPStrategy().timeout == datetime.timedelta(seconds=30)
    assert DDPStrategy(timeout=2.5).timeout == datetime.timedelta(seconds=2.5)
    assert DDPStrategy(timeout=datetime.timedelta(minutes=1)).timeout == datetime.timedelta(seconds=60)


@pytest.mark.parametrize("bad, error, match", [(0, ValueError, "must be positive"),
                                               ("10", TypeError, "expected seconds")])
def test_bad_timeouts(bad, error, match):
    with pytest.raises(error, match=rf"DDPStrategy\(timeout={bad!r}\): .*{match}"):
        DDPStrategy(timeout=bad)


def test_config_file_checks_collective_timeout():
    with pytest.raises(ValueError, match=r"collective_timeout=0\): expected a whole number >= 1"):
        LaunchConfig(collective_timeout=0)


def test_which_errors_are_collective_failures():
    assert is_collective_failure(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [x]:1"))
    assert is_collective_failure(RuntimeError("Timed out waiting 1000ms for recv operation to complete"))
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_collective_failure(ValueError("Connection closed by peer"))
    assert collective_name(RuntimeError("no traceback")) == "a collective"
