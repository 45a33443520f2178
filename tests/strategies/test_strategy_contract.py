"""The Strategy contract: every ability the loop, the Accelerator and the callbacks use is declared
on the base with a default; a strategy's precision is fixed and checked at construction, and the
registry builds a new strategy (or raises) instead of changing one."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers.models import BoringModel, regression_loader
from trainer import Accelerator, DeepSpeedPlugin, Trainer
from trainer.strategies import (DDPStrategy, DeepSpeedStrategy, FSDPStrategy, Precision, SingleDeviceStrategy,
                                Strategy, resolve_strategy)
from trainer.strategies.precision import PRECISION_TABLE, PRECISIONS, precision_name
from tests import ROOT

STRATEGIES = (SingleDeviceStrategy, DDPStrategy, FSDPStrategy, DeepSpeedStrategy)
# the abilities the loop, the Accelerator, the checkpoint code and the callbacks ask a strategy about
ABILITIES = ("checkpoint_format", "prepare", "driver", "distributed_type", "has_step_contexts", "needs_launch",
             "requested_processes", "connect", "full_state_dict",
             "local_state_bytes", "check_precision", "with_precision",
             "start_method", "refusals", "refuse_unsupported")


def test_every_ability_is_declared_on_the_base():
    missing = [name for name in ABILITIES if not hasattr(Strategy, name)]
    assert not missing, f"declare these on Strategy with a default: {missing}"


@pytest.mark.parametrize("cls", STRATEGIES)
def test_a_strategy_refuses_what_it_cannot_do_by_feature_with_its_reason(cls):
    """The loop and the callbacks tell the strategy what the user asked for; it refuses with its own reason
    (no caller reads a capability and decides)."""
    from trainer.strategies.exceptions import MisconfigurationException

    assert set(cls.refusals) <= Strategy.FEATURES, f"{cls.__name__} refuses unknown features"
    strategy = cls.__new__(cls)  # the refusals are the class's: nothing to set up
    for feature in sorted(Strategy.FEATURES):
        reason = cls.refusals.get(feature)
        if reason is None:
            assert strategy.refuse_unsupported(feature, "Asked()", "Fix it.") is True
        else:
            with pytest.raises(MisconfigurationException) as err:
                strategy.refuse_unsupported(feature, "Asked()", "Fix it.")
            assert str(err.value) == f"Asked() with {cls.__name__}: {reason} Fix it."
            with pytest.warns(UserWarning) as said:
                assert strategy.refuse_unsupported(feature, "Asked()", "Fix it.", warn=True) is False
            assert [str(w.message) for w in said] == [str(err.value)]
    with pytest.raises(ValueError, match=r"refuse_unsupported\('oom_splitt'\): expected one of"):
        strategy.refuse_unsupported("oom_splitt", "Asked()", "Fix it.")


@pytest.mark.parametrize("cls", STRATEGIES)
def test_every_strategy_is_one_level_below_the_base(cls):
    assert cls.__bases__ == (Strategy,), f"{cls.__name__} derives from {cls.__bases__}; compose shared code instead"


# the names a strategy (or its sharded checkpoint format) goes by: code asks the strategy, never its name
_NAMES = r"(deepspeed|fsdp|ddp|single_device|fsdp-dcp|DeepSpeedStrategy|FSDPStrategy|DDPStrategy|SingleDeviceStrategy)"
PROBE = re.compile(
    r"(getattr|hasattr|setattr|delattr)\([^,)]*strateg[^,)]*,"    # a probe of (or a patch on) a strategy object
    rf"|[=!]=\s*[\"']{_NAMES}[\"']|[\"']{_NAMES}[\"']\s*[=!]="  # a comparison with a strategy's name
    r"|isinstance\([^)]*(DeepSpeed|FSDP|DDP|SingleDevice)Strategy"  # a type test for one strategy
    r"|strategy_type\.|is Strategy\.|type\([^)]*strateg[^)]*\)\.__name__\s*[=!]=")  # method identity, class names


# the config file and its questionnaire validate the strategy *names* a user writes (strings in, strings out)
NAME_READERS = ("trainer/cli/config_file.py", "trainer/cli/config.py")


def _offenders() -> list[str]:
    offenders = []
    for folder in ("trainer", "callbacks", "strategies"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if str(path.relative_to(ROOT)) in NAME_READERS:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PROBE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return offenders


def test_no_probes_name_branches_or_method_identity_on_strategies():
    """The engine, loops, checkpoint code, CLI and callbacks ask the strategy only through its declared
    contract; checkpoints go through the strategy's format object (``checkpoint_format``), and code that
    holds only a checkpoint finds its format by the name it records, in the one registry."""
    offenders = _offenders()
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("line", [
    'if getattr(strategy, "sharded_format", None):', 'getattr(self.strategy, "supports_gradient_correction", True)',
    'hasattr(trainer.strategy, "engine")', 'setattr(strategy, method, wrapped)', 'if kind == "deepspeed":',
    'elif meta.get("sharded") != "fsdp-dcp":', 'isinstance(self.strategy, DeepSpeedStrategy)',
    'type(self.strategy).__name__ == "DDPStrategy"', 'if type(strategy).optimizer_step is Strategy.optimizer_step:'])
def test_the_source_scan_catches_each_kind_of_probe(line):
    assert PROBE.search(line), line


@pytest.mark.parametrize("cls", STRATEGIES)
def test_every_strategy_returns_one_checkpoint_format_found_again_by_its_recorded_name(cls):
    from trainer.strategies.checkpoint_format import CheckpointFormat, recorded_format

    strategy = cls()
    fmt = strategy.checkpoint_format
    assert isinstance(fmt, CheckpointFormat) and fmt.strategy is strategy
    assert strategy.checkpoint_format is fmt  # one object per strategy (FSDP's keeps its background-write group)
    header = {"sharded": fmt.name} if fmt.name else {}
    assert fmt.wrote(header) and recorded_format(header, "x.ckpt") is type(fmt)
    copied = strategy.with_precision("bf16-mixed") if cls is not DeepSpeedStrategy else strategy
    assert copied.checkpoint_format.strategy is copied  # a copy's format writes with the copy


def test_the_checkpoint_format_registry_refuses_a_second_format_under_a_taken_name():
    from trainer.strategies.checkpoint_format import ShardedFormat, recorded_format

    with pytest.raises(TypeError, match=r"name 'fsdp-dcp' is taken by trainer\.strategies\.checkpoint_format\.DCPFormat"):
        class Impostor(ShardedFormat):
            name = "fsdp-dcp"
    with pytest.raises(Exception, match=r"unknown kind \('nobody'\); this version reads 'deepspeed' and .*'fsdp-dcp'"):
        recorded_format({"sharded": "nobody"}, "x.ckpt")


def test_a_strategy_defining_only_its_device_trains_through_the_defaults():
    class OnlyDevice(Strategy):
        root_device = torch.device("cpu")

    model = BoringModel()
    before = model.layer.weight.detach().clone()
    trainer = Trainer(strategy=OnlyDevice(), max_steps=3, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(model, regression_loader())
    assert trainer.global_step == 3 and not torch.equal(before, model.layer.weight)


# -- precision: fixed at construction, checked on every path -------------------------------------
def test_fsdp_with_16_mixed_from_the_trainer_is_refused_as_its_constructor_refuses_it():
    with pytest.raises(ValueError, match=r"FSDPStrategy\(precision='16-mixed'\).*bf16-mixed"):
        FSDPStrategy(precision="16-mixed")
    strategy = FSDPStrategy()
    with pytest.raises(ValueError, match=r"FSDPStrategy\(precision='16-mixed'\).*bf16-mixed"):
        Trainer(strategy=strategy, precision="16-mixed", logger=False)
    assert strategy.precision.name == "32-true"  # the user's object is unchanged


def test_deepspeed_with_bf16_true_from_the_trainer_is_refused_as_its_constructor_refuses_it():
    with pytest.raises(ValueError, match=r"DeepSpeedStrategy\(precision='bf16-true'\).*'bf16-mixed'"):
        DeepSpeedStrategy(precision="bf16-true")
    with pytest.raises(ValueError, match=r"DeepSpeedStrategy\(precision='bf16-true'\).*'bf16-mixed'"):
        Trainer(strategy=DeepSpeedStrategy(zero_stage=3), precision="bf16-true", logger=False)
    with pytest.raises(ValueError, match=r"DeepSpeedStrategy\(precision='bf16-true'\)"):
        resolve_strategy(DeepSpeedStrategy(), precision="bf16-true")


def test_a_strategy_object_with_a_trainer_precision_is_a_new_object():
    strategy = DDPStrategy(timeout=30, find_unused_parameters=True)
    trainer = Trainer(strategy=strategy, precision="bf16-mixed", logger=False)
    built = trainer.strategy
    assert built is not strategy and isinstance(built, DDPStrategy)
    assert strategy.precision.name == "32-true" and built.precision.name == "bf16-mixed"
    assert built.find_unused_parameters and built.processes.timeout.total_seconds() == 30
    assert resolve_strategy(strategy) is strategy and resolve_strategy(strategy, precision="32-true") is strategy


def test_two_different_precisions_for_one_strategy_are_refused():
    with pytest.raises(ValueError, match=r"Trainer\(strategy=DDPStrategy\(precision='bf16-mixed'\), "
                                         r"precision='32-true'\): two different precisions"):
        Trainer(strategy=DDPStrategy(precision="bf16-mixed"), precision="32-true", logger=False)


def test_precision_cannot_be_replaced_after_construction():
    strategy = SingleDeviceStrategy("cpu")
    with pytest.raises(AttributeError):
        strategy.precision = Precision("bf16-mixed")


def test_one_table_maps_every_precision_spelling():
    assert PRECISIONS == tuple(PRECISION_TABLE)
    spellings = {"32": "32-true", 32: "32-true", "fp32": "32-true", "no": "32-true", "bf16": "bf16-mixed",
                 "BF16-Mixed": "bf16-mixed", "fp16": "16-mixed", 16: "16-mixed", "16": "16-mixed",
                 "bf16-true": "bf16-true"}
    assert {value: precision_name(value) for value in spellings} == spellings
    for name, (accelerate, autocast, params) in PRECISION_TABLE.items():
        precision = Precision(name)
        assert (precision.mixed_precision, precision.autocast_dtype, precision.param_dtype) == (accelerate, autocast,
                                                                                                params)
    assert Accelerator(cpu=True, mixed_precision="fp16").mixed_precision == "fp16"
    assert Accelerator(cpu=True, mixed_precision="bf16-true").mixed_precision == "no"
    with pytest.raises(ValueError, match=r"Trainer\(precision='fp8'\): unknown precision.*'16-mixed'"):
        precision_name("fp8")


def test_deepspeed_plugin_settings_reach_the_strategy_through_its_declared_methods():
    strategy = DeepSpeedPlugin(zero_stage=1, gradient_clipping=0.5).strategy("fp16", 4)
    assert strategy.precision.name == "16-mixed"
    config = strategy.ds_config()
    assert config["gradient_clipping"] == 0.5 and config["fp16"]["enabled"] and not config["bf16"]["enabled"]
    assert strategy.accumulate_grad_batches == 4


def test_a_strategy_reads_the_launchers_environment_when_first_needed_not_when_built(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    strategy = DDPStrategy(requested_processes=2)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (strategy.global_rank, strategy.world_size, strategy.needs_launch) == (1, 2, False)
