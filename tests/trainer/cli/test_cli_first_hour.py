"""The command line's first-hour polish (issue 27, point 5): an unknown option prints that command's usage
and the closest option, an unknown command the closest command; `trainer config` takes the Trainer's
precision names, warns about `gpu` where torch sees none, and names settings as the file does, never the
class the code builds; `trainer test` names the config-file setting a check would fail on."""

from __future__ import annotations

import pytest
import torch
import yaml

from trainer.cli import main


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's error(): exit status 2
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_unknown_launch_option_prints_launchs_usage_and_the_closest_option(capsys, tmp_path):
    code, out = run(capsys, "launch", "--num-proceses", "2", str(tmp_path / "train.py"))
    assert code == 2
    assert "usage: trainer launch" in out
    assert "trainer launch: error: unrecognized arguments: --num-proceses. Did you mean --num-processes?" in out


def test_a_misspelt_config_option_with_a_value_is_refused_for_the_option(capsys, tmp_path):
    """`--devise cpu`: argparse read `cpu` as the `show` action and refused that; the option is what is wrong."""
    code, out = run(capsys, "config", "--config-file", str(tmp_path / "c.yaml"), "--devise", "cpu")
    assert code == 2 and "usage: trainer config" in out
    assert "trainer config: error: unrecognized arguments: --devise. Did you mean --device?" in out
    assert "invalid choice" not in out and not (tmp_path / "c.yaml").exists()


def test_a_bad_action_without_a_misspelt_option_keeps_argparses_message(capsys, tmp_path):
    code, out = run(capsys, "config", "--config-file", str(tmp_path / "c.yaml"), "shwo")
    assert code == 2 and "invalid choice: 'shwo'" in out


def test_an_unknown_command_names_the_closest(capsys):
    code, out = run(capsys, "lauch", "train.py")
    assert code == 2 and "unknown command 'lauch'. Did you mean 'launch'?" in out


def test_script_arguments_after_the_script_are_not_options_of_launch(capsys, tmp_path):
    code, out = run(capsys, "launch", str(tmp_path / "missing.py"), "--lr", "3e-4", "--foo")
    assert code == 2 and "script" in out and "not found" in out and "unrecognized" not in out


@pytest.mark.parametrize("spelling, written", [("bf16-mixed", "bf16"), ("16-mixed", "fp16"), ("32-true", "no"),
                                               ("bf16", "bf16")])
def test_config_takes_the_trainers_precision_names(capsys, tmp_path, spelling, written):
    path = tmp_path / "c.yaml"
    code, out = run(capsys, "config", "--default", "--config-file", str(path), "--mixed-precision", spelling)
    assert code == 0, out
    assert yaml.safe_load(path.read_text())["mixed_precision"] == written


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for a machine where torch sees no GPU")
def test_config_warns_when_gpu_is_chosen_where_torch_sees_none(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    code, out = run(capsys, "config", "--default", "--config-file", str(path), "--device", "gpu")
    assert code == 0 and path.is_file()  # written: it may be meant for machines that have GPUs
    assert "trainer config: warning: device gpu, but torch" in out and "sees no GPU on this machine" in out
    code, out = run(capsys, "config", "--default", "--config-file", str(tmp_path / "d.yaml"), "--device", "cpu")
    assert "warning" not in out


def test_errors_name_settings_as_the_file_does_not_the_class(capsys, tmp_path):
    code, out = run(capsys, "config", "--default", "--config-file", str(tmp_path / "c.yaml"), "--num-machines", "0")
    assert code == 2 and "--num-machines '0': expected a whole number >= 1" in out and "LaunchConfig" not in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_processes: 2\nmain_process_port: 99999\nfsdp:\n  shard: 1\n")
    code, out = run(capsys, "config", "show", "--config-file", str(bad))
    assert code == 1 and "LaunchConfig" not in out, out


def test_trainer_test_names_the_config_file_setting_a_check_would_fail_on(capsys, tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("num_processes: 2\nstrategy: fsdp\nmixed_precision: fp16\n")
    monkeypatch.setenv("TRAINER_CONFIG_FILE", str(path))
    code, out = run(capsys, "test")
    assert code == 2
    assert (f"trainer test: Config file {path}: mixed_precision 'fp16': not with strategy 'fsdp'") in out
    assert "Set mixed_precision: bf16" in out and "FSDPStrategy" not in out and "precision=" not in out
