"""The config file (`trainer.cli.config_file`) and `trainer config`: questionnaire, --default, flags, show."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trainer import cli
from trainer.cli import config as config_command
from trainer.cli.config_file import LaunchConfig, config_path, load_config, save_config, to_yaml

FIELD_ORDER = ["num_machines", "min_machines", "machine_rank", "main_process_ip", "main_process_port", "num_processes", "device",
               "gpu_ids", "mixed_precision", "strategy", "deepspeed", "fsdp", "gradient_accumulation_steps",
               "max_restarts", "rdzv_backend", "rdzv_timeout", "collective_timeout"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh HOME without TRAINER_CONFIG_FILE; returns where the config file goes by default."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TRAINER_CONFIG_FILE", raising=False)
    return tmp_path / "home" / ".config" / "trainer" / "default_config.yaml"


def run_cli(monkeypatch, capsys, argv: list[str], answers: str = "") -> tuple[int, str, str]:
    """Run `trainer <argv>` in this process with ``answers`` on stdin; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(answers))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- location ---------------------------------------------------------------------------------------
def test_config_path_is_home_default_then_env_var(home, monkeypatch, tmp_path):
    assert config_path() == home
    monkeypatch.setenv("TRAINER_CONFIG_FILE", "~/elsewhere.yaml")
    assert config_path() == tmp_path / "home" / "elsewhere.yaml"


# -- the questionnaire ------------------------------------------------------------------------------
def test_questionnaire_multi_machine_deepspeed_reasks_invalid_answers(home, monkeypatch, capsys):
    answers = "\n".join([
        "2",                 # machines
        "two", "5", "1",     # rank: not a number, out of range, then valid
        "10.0.0.1", "",      # main address, default port
        "4",                 # processes per machine
        "tpu", "cuda",       # device: unknown, then torch's word for a GPU
        "0,1", "0,1,2,3",    # too few GPUs for 4 processes, then enough
        "fp8", "bf16",       # mixed precision
        "single_device", "deepspeed",
        "3", "cpu", "cpu",   # ZeRO-3 with optimizer and parameter offload
        "8",                 # accumulation
    ]) + "\n"
    code, out, err = run_cli(monkeypatch, capsys, ["config"], answers)
    assert code == 0, err
    assert out.count("Invalid answer") == 6
    assert "'two' is not a whole number" in out
    assert "machine_rank 5: ranks count from 0, so with num_machines=2 it must lie in 0..1" in out
    assert "lists 2 GPU(s), but num_processes=4" in out
    assert "Did you mean 'fp16'?" in out
    assert "strategy 'single_device': runs one process" in out
    assert "How many machines (nodes) train together? [1]: " in out
    assert "Mixed precision? (no, fp16, bf16) [no]: " in out
    assert f"Configuration saved to {home}" in out
    cfg = load_config()
    assert (cfg.num_machines, cfg.machine_rank, cfg.main_process_ip, cfg.main_process_port) == (2, 1, "10.0.0.1",
                                                                                               29500)
    assert (cfg.num_processes, cfg.device, cfg.gpu_ids, cfg.mixed_precision) == (4, "gpu", "0,1,2,3", "bf16")
    assert cfg.deepspeed == {"zero_stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"}
    assert cfg.gradient_accumulation_steps == 8 and cfg.fsdp is None


def test_questionnaire_single_machine_fsdp_skips_machine_questions(home, monkeypatch, capsys):
    answers = "\n".join(["", "2", "", "", "fsdp", "shard_grad_op", "maybe", "y", "transformer", "", "Block,Embed",
                         "yes", "4"]) + "\n"
    code, out, err = run_cli(monkeypatch, capsys, ["config"], answers)
    assert code == 0, err
    assert "rank of this machine" not in out and "Which GPUs" not in out and "ZeRO" not in out
    assert "'maybe' is not yes or no" in out
    assert "needs the layer's class name" in out  # an empty answer to a question without default
    cfg = load_config(home)
    assert cfg.strategy == "fsdp" and cfg.num_processes == 2
    assert cfg.fsdp == {"sharding_strategy": "SHARD_GRAD_OP", "cpu_offload": True, "auto_wrap_policy": "transformer",
                        "transformer_layer_cls": "Block,Embed", "min_num_params": 100_000_000,
                        "activation_checkpointing": True}


def test_questionnaire_input_ending_early_is_an_error(home, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, ["config"], "1\n")
    assert code == 1
    assert "input ended before every question was answered" in err and "--default" in err
    assert not home.exists()


# -- --default and flags ----------------------------------------------------------------------------
def test_default_writes_defaults_without_asking(home, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, ["config", "--default"])  # empty stdin: a question would fail
    assert code == 0
    assert "?" not in out and f"Configuration saved to {home}" in out
    assert load_config(home) == LaunchConfig()


def test_default_uses_every_gpu_when_cuda_is_available(home, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert run_cli(monkeypatch, capsys, ["config", "--default"])[0] == 0
    cfg = load_config(home)
    assert (cfg.device, cfg.num_processes, cfg.gpu_ids) == ("gpu", 4, "all")


def test_flags_skip_their_questions(home, monkeypatch, capsys):
    argv = ["config", "--num-machines", "1", "--num-processes", "2", "--strategy", "deepspeed", "--zero-stage", "1"]
    code, out, err = run_cli(monkeypatch, capsys, argv, "\n".join(["gpu", "1,3", "fp16", "cpu", "2"]) + "\n")
    assert code == 0, err
    for skipped in ("How many machines", "How many processes", "Distributed strategy", "ZeRO stage",
                    "Offload the parameters"):
        assert skipped not in out
    for asked in ("Train on CPU or GPU", "Which GPUs", "Mixed precision", "Offload the optimizer", "micro-batches"):
        assert asked in out
    cfg = load_config(home)
    assert (cfg.num_processes, cfg.device, cfg.gpu_ids, cfg.mixed_precision) == (2, "gpu", "1,3", "fp16")
    assert cfg.deepspeed == {"zero_stage": 1, "offload_optimizer_device": "cpu", "offload_param_device": "none"}
    assert cfg.gradient_accumulation_steps == 2


def test_all_flags_ask_nothing(tmp_path, monkeypatch, capsys):
    target = tmp_path / "deep" / "dir" / "cfg.yaml"
    argv = ["config", "--config-file", str(target), "--num-machines", "2", "--machine-rank", "1",
            "--main-process-ip", "node-0", "--main-process-port", "1234", "--num-processes", "2", "--device", "cpu",
            "--mixed-precision", "no", "--strategy", "fsdp", "--fsdp-sharding-strategy", "HYBRID_SHARD",
            "--fsdp-cpu-offload", "--fsdp-auto-wrap-policy", "size", "--fsdp-min-num-params", "1000",
            "--fsdp-activation-checkpointing", "no", "--gradient-accumulation-steps", "3", "--max-restarts", "2",
            "--rdzv-backend", "c10d", "--rdzv-timeout", "60"]
    code, out, err = run_cli(monkeypatch, capsys, argv)
    assert code == 0, err
    assert "?" not in out and f"Configuration saved to {target}" in out
    cfg = load_config(target)
    assert cfg.to_dict() == {
        "num_machines": 2, "min_machines": None, "machine_rank": 1, "main_process_ip": "node-0",
        "main_process_port": 1234, "num_processes": 2, "device": "cpu", "gpu_ids": "all", "mixed_precision": "no", "strategy": "fsdp",
        "deepspeed": None, "fsdp": {"sharding_strategy": "HYBRID_SHARD", "cpu_offload": True,
                                    "auto_wrap_policy": "size", "transformer_layer_cls": None,
                                    "min_num_params": 1000, "activation_checkpointing": False},
        "gradient_accumulation_steps": 3, "max_restarts": 2, "rdzv_backend": "c10d", "rdzv_timeout": 60,
        "collective_timeout": 600}


def test_accelerate_underscore_spellings_are_aliases(home, monkeypatch, capsys):
    argv = ["config", "--default", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.1.1.1",
            "--main_process_port", "29600", "--num_processes", "3", "--device", "gpu", "--gpu_ids", "0,1,2",
            "--mixed_precision", "bf16"]
    assert run_cli(monkeypatch, capsys, argv)[0] == 0
    cfg = load_config(home)
    assert (cfg.num_machines, cfg.machine_rank, cfg.main_process_ip, cfg.main_process_port) == (2, 1, "10.1.1.1",
                                                                                               29600)
    assert (cfg.num_processes, cfg.gpu_ids, cfg.mixed_precision) == (3, "0,1,2", "bf16")


def test_env_var_location_and_config_file_flag(home, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TRAINER_CONFIG_FILE", str(tmp_path / "from_env.yaml"))
    run_cli(monkeypatch, capsys, ["config", "--default"])
    assert (tmp_path / "from_env.yaml").is_file() and not home.exists()
    run_cli(monkeypatch, capsys, ["config", "--default", "--config_file", str(tmp_path / "flag.yaml")])
    assert (tmp_path / "flag.yaml").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--num-processes", "two"], "--num-processes 'two': 'two' is not a whole number"),
    (["--num-machines", "0"], "--num-machines '0': expected a whole number >= 1"),
    (["--device", "tpu"], "expected one of 'cpu', 'gpu'"),
    (["--strategy", "dpp"], "Did you mean 'ddp'?"),
    (["--zero-stage", "3"], "these settings are for strategy 'deepspeed', but strategy='ddp'"),
    (["--strategy", "deepspeed", "--zero-stage", "2", "--offload-param-device", "cpu"],
     "parameters can only be offloaded with ZeRO stage 3"),
    (["--gpu-ids", "0"], "chooses GPUs, but device='cpu'"),
    (["--strategy", "fsdp", "--fsdp-auto-wrap-policy", "transformer"],
     "--default cannot answer 'Class name of the transformer layer"),
    (["--fsdp-cpu-offload", "perhaps"], "'perhaps' is not yes or no"),
])
def test_invalid_flag_exits_2_with_reason(home, monkeypatch, capsys, argv, message):
    code, _, err = run_cli(monkeypatch, capsys, ["config", "--default", *argv])
    assert code == 2
    assert err.startswith("trainer config: error: ") and message in err
    assert not home.exists()


def test_unwritable_location_is_a_clear_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(monkeypatch, capsys, ["config", "--default", "--config-file", str(blocker / "c.yaml")])
    assert code == 1 and f"cannot write {blocker / 'c.yaml'}" in err and "--config-file" in err


# -- show -------------------------------------------------------------------------------------------
def test_show_prints_path_and_contents(home, monkeypatch, capsys):
    run_cli(monkeypatch, capsys, ["config", "--default", "--num-processes", "3"])
    code, out, _ = run_cli(monkeypatch, capsys, ["config", "show"])
    assert code == 0
    assert out.startswith(f"Config file: {home}\n")
    assert "num_processes: 3" in out and "# trainer launch configuration" in out


def test_show_without_a_file_says_how_to_make_one(home, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, ["config", "show"])
    assert code == 1
    assert str(home) in out and "No config file there yet" in out and "trainer config --default" in out


def test_show_flags_an_invalid_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_machines: 0\n")
    code, out, err = run_cli(monkeypatch, capsys, ["config", "show", "--config-file", str(bad)])
    assert code == 1 and "num_machines: 0" in out
    assert "This file is not valid" in err and "expected a whole number >= 1" in err


def test_show_refuses_question_flags(home, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, ["config", "show", "--num-processes", "2"])
    assert code == 2 and "show takes only --config-file" in err


def test_top_level_help_lists_the_commands(capsys):
    """The console script runs this same `main`; tests/trainer/cli/test_cli_env.py runs the installed script itself."""
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for command in ("config", "env", "version"):
        assert f"    {command} " in out


def test_config_help_lists_flags_and_aliases(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["config", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--default", "--config-file", "--num-processes", "--num_processes", "--mixed_precision",
                 "--zero-stage", "--fsdp-sharding-strategy", "--gradient-accumulation-steps", "--max-restarts"):
        assert flag in out


# -- LaunchConfig validation ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_machines": 0}, ValueError, r"LaunchConfig\(num_machines=0\): expected a whole number >= 1"),
    ({"num_machines": "2"}, TypeError, r"num_machines='2'\): expected a whole number >= 1, got str"),
    ({"num_processes": True}, TypeError, r"num_processes=True\): expected a whole number"),
    ({"machine_rank": -1}, ValueError, r"machine_rank=-1\): expected a whole number >= 0"),
    ({"machine_rank": 1}, ValueError, r"machine_rank=1\): ranks count from 0, so with num_machines=1"),
    ({"main_process_port": 0}, ValueError, r"main_process_port=0\): expected a whole number >= 1"),
    ({"main_process_port": 65536}, ValueError, r"a TCP port lies in 1..65535"),
    ({"main_process_ip": "10.0.0 .1"}, ValueError, r"expected the IP address or host name"),
    ({"device": "tpu"}, ValueError, r"device='tpu'\): expected one of 'cpu', 'gpu'"),
    ({"gpu_ids": "0;1"}, ValueError, r"expected 'all' or GPU indices separated by commas"),
    ({"device": "gpu", "gpu_ids": "0,0"}, ValueError, r"a GPU index appears twice"),
    ({"gpu_ids": "0"}, ValueError, r"chooses GPUs, but device='cpu'. Set device: gpu"),
    ({"device": "gpu", "gpu_ids": "0", "num_processes": 2}, ValueError,
     r"lists 1 GPU\(s\), but num_processes=2 .* lower num_processes to 1"),
    ({"mixed_precision": "fp8"}, ValueError, r"expected one of 'no', 'fp16', 'bf16'. Did you mean 'fp16'\?"),
    ({"strategy": "fsdp2"}, ValueError, r"expected one of 'ddp', 'fsdp', 'deepspeed', 'single_device'"),
    ({"strategy": "single_device", "num_processes": 2}, ValueError, r"runs one process, but num_machines=1"),
    ({"rdzv_backend": "etcd"}, ValueError, r"rdzv_backend='etcd'\): expected one of 'static', 'c10d'"),
    ({"rdzv_timeout": 0}, ValueError, r"rdzv_timeout=0\): expected a whole number >= 1"),
    ({"min_machines": 0, "num_machines": 2, "rdzv_backend": "c10d"}, ValueError, r"min_machines=0\): expected a whole"),
    ({"min_machines": 3, "num_machines": 2, "rdzv_backend": "c10d"}, ValueError,
     r"min_machines=3\): the fewest machines cannot exceed the most, num_machines=2. .* --num-machines 2:3"),
    ({"min_machines": 1, "num_machines": 2}, ValueError,
     r"rdzv_backend='static'\): a range of machines \(1:2\) needs the elastic rendezvous.* rdzv_backend: c10d"),
    ({"max_restarts": -1}, ValueError, r"max_restarts=-1\): expected a whole number >= 0"),
    ({"gradient_accumulation_steps": 0}, ValueError, r"gradient_accumulation_steps=0\)"),
    ({"deepspeed": {"zero_stage": 1}}, ValueError, r"for strategy 'deepspeed', but strategy='ddp'"),
    ({"fsdp": {}}, ValueError, r"for strategy 'fsdp', but strategy='ddp'. Set strategy: fsdp, or remove"),
    ({"strategy": "deepspeed", "deepspeed": [3]}, TypeError, r"expected a mapping with keys zero_stage"),
    ({"strategy": "deepspeed", "deepspeed": {"zero_stage": 4}}, ValueError,
     r"deepspeed.zero_stage=4\): expected one of '0', '1', '2', '3'"),
    ({"strategy": "deepspeed", "deepspeed": {"stage": 3}}, ValueError,
     r"unknown key 'stage'. Known keys: zero_stage, .*Did you mean 'zero_stage'\?"),
    ({"strategy": "deepspeed", "deepspeed": {"zero_stage": 2, "offload_param_device": "cpu"}}, ValueError,
     r"parameters can only be offloaded with ZeRO stage 3, but zero_stage=2"),
    ({"strategy": "deepspeed", "deepspeed": {"zero_stage": 0, "offload_optimizer_device": "cpu"}}, ValueError,
     r"optimizer offload needs ZeRO stage 1 or higher"),
    ({"strategy": "deepspeed", "deepspeed": {"offload_optimizer_device": "nvme"}}, ValueError,
     r"expected one of 'none', 'cpu'"),
    ({"strategy": "fsdp", "fsdp": {"sharding_strategy": "full_shrad"}}, ValueError,
     r"Did you mean 'FULL_SHARD'\?"),
    ({"strategy": "fsdp", "fsdp": {"cpu_offload": "yes"}}, TypeError, r"fsdp.cpu_offload='yes'\): expected true"),
    ({"strategy": "fsdp", "fsdp": {"auto_wrap_policy": "transformer"}}, ValueError,
     r"needs the layer's class name. Set fsdp.transformer_layer_cls"),
    ({"strategy": "fsdp", "fsdp": {"transformer_layer_cls": "Block"}}, ValueError,
     r"only used with auto_wrap_policy 'transformer', but it is 'size'"),
    ({"strategy": "fsdp", "fsdp": {"auto_wrap_policy": "transformer", "transformer_layer_cls": "my block"}},
     ValueError, r"expected the class name of a repeated layer"),
    ({"strategy": "fsdp", "fsdp": {"min_num_params": 0}}, ValueError, r"fsdp.min_num_params=0\)"),
])
def test_launch_config_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        LaunchConfig(**kwargs)


def test_strategy_section_is_always_filled():
    assert LaunchConfig().deepspeed is None and LaunchConfig().fsdp is None
    assert LaunchConfig(strategy="deepspeed").deepspeed == {"zero_stage": 2, "offload_optimizer_device": "none",
                                                            "offload_param_device": "none"}
    assert LaunchConfig(strategy="fsdp").fsdp["sharding_strategy"] == "FULL_SHARD"
    assert LaunchConfig(strategy="fsdp").deepspeed is None


def test_launch_config_is_keyword_only_slotted_and_normalises():
    with pytest.raises(TypeError):
        LaunchConfig(1)  # noqa: keyword-only on purpose
    cfg = LaunchConfig(device="CUDA", gpu_ids=" 0, 2", num_processes=2, mixed_precision=False,
                       strategy="DeepSpeed", deepspeed={"zero_stage": 3, "offload_param_device": None})
    assert not hasattr(cfg, "__dict__")
    assert (cfg.device, cfg.gpu_ids, cfg.mixed_precision, cfg.strategy) == ("gpu", "0,2", "no", "deepspeed")
    assert cfg.deepspeed == {"zero_stage": 3, "offload_optimizer_device": "none", "offload_param_device": "none"}


# -- the file ---------------------------------------------------------------------------------------
def test_yaml_round_trip_is_readable_and_in_logical_order(tmp_path):
    cfg = LaunchConfig(num_machines=2, machine_rank=1, num_processes=2, device="gpu", gpu_ids="0,1",
                       mixed_precision="bf16", strategy="deepspeed", deepspeed={"zero_stage": 3},
                       gradient_accumulation_steps=4)
    path = save_config(cfg, tmp_path / "a" / "b.yaml")
    assert load_config(path) == cfg
    text = path.read_text()
    assert text.startswith("# trainer launch configuration")
    assert "fsdp" not in text  # empty sections are left out
    assert list(yaml.safe_load(text)) == [k for k in FIELD_ORDER if k not in ("fsdp", "min_machines")]
    assert "mixed_precision: bf16\nstrategy: deepspeed\ndeepspeed:\n  zero_stage: 3\n" in text
    assert list(cfg.to_dict()) == FIELD_ORDER
    assert set(yaml.safe_load(to_yaml(LaunchConfig(strategy="fsdp", fsdp={})))) == set(FIELD_ORDER) - {"deepspeed",
                                                                                                        "min_machines"}


def test_hand_written_yaml_quirks_are_understood(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\ngpu_ids: 1\ndevice: gpu\n")  # YAML reads these as False and 1
    cfg = load_config(path)
    assert (cfg.mixed_precision, cfg.gpu_ids) == ("no", "1")
    path.write_text("")
    assert load_config(path) == LaunchConfig()


def test_unknown_key_in_file_lists_known_keys_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_process: 2\n")
    with pytest.raises(ValueError, match=rf"Config file {path}: unknown setting 'num_process'. Known keys: "
                                         r"num_machines, min_machines, machine_rank, .* Did you mean 'num_processes'\?"):
        load_config(path)


@pytest.mark.parametrize("text, error, match", [
    ("num_machines: [1\n", ValueError, r"(?s)is not valid YAML: .*Fix the syntax, or rewrite the file"),
    ("- 1\n- 2\n", TypeError, r"expected a mapping of settings"),
    ("main_process_port: 99999\n", ValueError, r"Config file .*main_process_port 99999: a TCP port"),
])
def test_invalid_file_names_the_file(tmp_path, text, error, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(error, match=match):
        load_config(path)


def test_missing_file_tells_how_to_create_one(home):
    with pytest.raises(FileNotFoundError, match=r"No trainer config file at .*default_config.yaml. Create one with "
                                                r"`trainer config` .*`trainer config --default`"):
        load_config()


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = save_config(LaunchConfig(num_processes=2), tmp_path / "c.yaml")
    before = path.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_config(LaunchConfig(num_processes=3), path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    with pytest.raises(TypeError, match=r"save_config\(cfg=\{'num_processes': 2\}\): expected a LaunchConfig"):
        save_config({"num_processes": 2}, path)


def test_every_question_maps_to_a_setting():
    keys = {q.key.partition(".")[0] for q in config_command.QUESTIONS}
    assert keys == set(FIELD_ORDER)
    dests = [q.dest for q in config_command.QUESTIONS]
    assert len(dests) == len(set(dests))
