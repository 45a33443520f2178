"""TrainerCLI and `trainer fit|validate|test|predict --config`: command-line overrides, --print_config, subclass
selection, optimizer groups, errors with the key's path and a did-you-mean, and how `trainer test` tells the
config-driven stage from the built-in self-check (the example run by its YAML file alone:
tests/examples/test_cli_regression.py)."""

from __future__ import annotations

import re
import sys

import pytest
import torch
import yaml

pytest.importorskip("jsonargparse")

from trainer import DataModule, Trainer  # noqa: E402
from trainer.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from trainer.cli import TrainerCLI, main  # noqa: E402
from trainer.cli.trainer_cli import wants_config  # noqa: E402
from tests.helpers import BoringModel, regression_loader  # noqa: E402


class CliNet(BoringModel):
    def __init__(self, lr: float = 0.1, hidden: int = 4):
        super().__init__(lr=lr)
        self.hidden = hidden

    def train_dataloader(self):
        return regression_loader(32, 8)

    def val_dataloader(self):
        return regression_loader(16, 8)

    def test_dataloader(self):
        return regression_loader(16, 8)


class CliData(DataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return regression_loader(32, self.batch_size)


QUIET = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing",
         "false", "--trainer.accelerator", "cpu"]


def test_overrides_build_the_model_and_trainer_and_run_the_subcommand():
    cli = TrainerCLI(CliNet, args=["fit", *QUIET, "--trainer.max_epochs", "2", "--model.lr", "0.01",
                                   "--seed_everything", "3", "--trainer.callbacks+=EarlyStopping",
                                   "--trainer.callbacks.monitor", "val/loss"], save_config_callback=None)
    assert isinstance(cli.model, CliNet) and cli.model.lr == 0.01
    assert isinstance(cli.trainer, Trainer) and cli.trainer.max_epochs == 2 and cli.trainer.current_epoch == 2
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)] == [EarlyStopping]
    assert cli.trainer.early_stopping_callback.monitor == "val/loss"


def test_data_chosen_by_name_feeds_the_fit():
    cli = TrainerCLI(CliNet, save_config_callback=None, args=["fit", *QUIET, "--trainer.max_epochs", "1",
                                                               "--data", "CliData", "--data.batch_size", "16"])
    assert type(cli.datamodule) is CliData and cli.trainer.datamodule is cli.datamodule
    assert cli.trainer.global_step == 2  # 32 samples in batches of 16 (the module's own loader has 8)


def test_subclass_selection_by_name_and_run_false():
    cli = TrainerCLI(BoringModel, subclass_mode_model=True, run=False, save_config_callback=None,
                     args=["--model", "CliNet", "--model.hidden", "7", *QUIET, "--trainer.max_steps", "3"])
    assert type(cli.model) is CliNet and cli.model.hidden == 7 and cli.trainer.max_steps == 3
    assert cli.trainer.global_step == 0  # built, not run


def test_trainer_defaults_and_callbacks_from_a_config_dict():
    cli = TrainerCLI(CliNet, run=False, save_config_callback=None, trainer_defaults={"max_epochs": 9},
                     args={"trainer": {"callbacks": [{"class_path": "trainer.callbacks.ModelCheckpoint",
                                                      "init_args": {"monitor": "val/loss", "save_top_k": 2}}],
                                       "logger": False}})
    assert cli.trainer.max_epochs == 9
    checkpoint = cli.trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor == "val/loss" and checkpoint.save_top_k == 2


def test_optimizer_and_lr_scheduler_groups_replace_configure_optimizers():
    cli = TrainerCLI(CliNet, save_config_callback=None, args=[
        "fit", *QUIET, "--trainer.max_epochs", "2", "--optimizer", "Adam", "--optimizer.lr", "0.004",
        "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "1", "--lr_scheduler.gamma", "0.5"])
    optimizer = cli.trainer.optimizer
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    assert [type(c.scheduler) for c in cli.trainer.lr_scheduler_configs] == [torch.optim.lr_scheduler.StepLR]
    with pytest.raises(ValueError, match=r"--lr_scheduler was given without --optimizer"):
        TrainerCLI(CliNet, save_config_callback=None, run=False, args=["--lr_scheduler", "StepLR",
                                                                       "--lr_scheduler.step_size", "1"])


def test_print_config_shows_the_resolved_config_and_exits(capsys):
    with pytest.raises(SystemExit) as exit_info:
        TrainerCLI(CliNet, args=["fit", "--model.lr", "0.5", "--trainer.max_epochs", "4", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["lr"] == 0.5 and printed["trainer"]["max_epochs"] == 4
    assert "accumulate_grad_batches" in printed["trainer"] and "callbacks" in printed["trainer"]


@pytest.mark.parametrize("args, expected", [
    (["fit", "--trainer.max_epoch", "3"], r"trainer\.max_epoch.*\nDid you mean 'trainer\.max_epochs'\?"),
    (["fit", "--model.lrr", "3"], r"model\.lrr.*\nDid you mean 'model\.lr'\?"),
    (["fit", "--trainer.max_epochs", "three"], r'Parser key "trainer\.max_epochs".*\n.*Given value: three'),
])
def test_bad_keys_and_types_name_the_key(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        TrainerCLI(CliNet, args=args, save_config_callback=None)
    assert exit_info.value.code == 2
    assert re.search(expected, capsys.readouterr().err, re.S)


def test_a_bad_init_args_key_of_a_class_path_gets_the_closest_parameter(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": f"{__name__}.CliNet", "init_args": {"hiden": 3}}}))
    with pytest.raises(SystemExit):
        TrainerCLI(args=["fit", "--config", str(config)], save_config_callback=None)
    assert f"Did you mean 'hidden' (init_args of {__name__}.CliNet)?" in capsys.readouterr().err


def test_bad_values_are_the_trainers_errors_with_the_setting_named():
    with pytest.raises(ValueError, match=r"Trainer\(max_epochs=0\)") as error:
        TrainerCLI(CliNet, args=["fit", *QUIET, "--trainer.max_epochs", "0"], save_config_callback=None)
    assert "From the config key 'trainer.max_epochs'" in error.value.__notes__[0]


def test_trainer_test_runs_the_config_stage_only_when_given_a_run_config(tmp_path):
    assert wants_config(["--config", "run.yaml"]) and wants_config(["-c=run.yaml"])
    assert wants_config(["--model.lr", "1"]) and wants_config(["--print_config"])
    assert not wants_config([]) and not wants_config(["--config_file", "x.yaml", "--cpu"])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": f"{__name__}.CliNet"},
                                      "trainer": {"logger": False, "enable_progress_bar": False,
                                                  "accelerator": "cpu"}}))
    assert main(["test", "--config", str(config)]) == 0  # the test stage, not the self-check


def test_a_missing_jsonargparse_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonargparse", None)
    with pytest.raises(ImportError, match=r"pip install 'trainer\[cli\]'"):
        TrainerCLI(CliNet, args=["fit"])
