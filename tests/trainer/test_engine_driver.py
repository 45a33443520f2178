"""The step engine drives what the strategy returns (issue 26, points 1-2): a ``Driver`` for backward,
unscale, clip, step and zero_grad, through both doors and manual optimization; ``step()`` returns a
``StepResult``; the engine's plan changes only through its methods; Accelerate's ``DistributedType`` is
the strategy's answer."""

from __future__ import annotations

import re

import pytest
import torch

from tests import ROOT
from tests.helpers.models import BoringModel, regression_loader
from trainer import Accelerator, Trainer
from trainer.engine.step_engine import StepEngine
from trainer.strategies import SingleDeviceStrategy, Strategy
from trainer.strategies.driver import STEPPED, Driver, StepResult
from trainer.utils import DistributedType


class RecordingDriver(Driver):
    """The default driver, writing down each call the engine makes."""

    def __init__(self, precision, calls: list[str]) -> None:
        super().__init__(precision)
        self.calls = calls

    def backward(self, loss, *args, **kwargs):
        self.calls.append("backward")
        super().backward(loss, *args, **kwargs)

    def unscale(self, optimizer):
        self.calls.append("unscale")
        super().unscale(optimizer)

    def clip_norm(self, parameters, max_norm, norm_type=2.0):
        self.calls.append("clip_norm")
        return super().clip_norm(parameters, max_norm, norm_type)

    def clip_value(self, parameters, clip_value):
        self.calls.append("clip_value")
        super().clip_value(parameters, clip_value)

    def step(self, optimizer, closure=None):
        self.calls.append("step")
        return super().step(optimizer, closure)

    def zero_grad(self, optimizer, set_to_none=True):
        self.calls.append("zero_grad")
        super().zero_grad(optimizer, set_to_none)

    def renormalise(self, fix):
        self.calls.append("renormalise")
        super().renormalise(fix)


class RecordingStrategy(SingleDeviceStrategy):
    def __init__(self, precision=None) -> None:
        super().__init__("cpu", precision)
        self.calls: list[str] = []

    def driver(self) -> Driver:
        return RecordingDriver(self.precision, self.calls)


def _quiet(**kwargs):
    return dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                **kwargs)


def test_the_trainer_steps_through_the_strategys_driver():
    strategy = RecordingStrategy()
    trainer = Trainer(strategy=strategy, max_steps=2, gradient_clip_val=1.0, accumulate_grad_batches=2, **_quiet())
    trainer.fit(BoringModel(), regression_loader(n=32))
    # the loop unscales before on_before_optimizer_step, and clip unscales again (the precision does it once)
    per_step = ["backward", "backward", "unscale", "unscale", "clip_norm", "step", "zero_grad"]
    assert trainer.strategy.calls == per_step * 2 and trainer.global_step == 2


def test_the_accelerator_steps_and_clips_through_the_strategys_driver():
    strategy = RecordingStrategy()
    accelerator = Accelerator(strategy=strategy, gradient_accumulation_steps=2)
    model = torch.nn.Linear(4, 1)
    model, opt, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                             regression_loader(n=16, batch_size=4))
    for x, y in loader:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                accelerator.clip_grad_value_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    per_step = ["backward", "backward", "unscale", "clip_norm", "unscale", "clip_value", "step", "zero_grad"]
    assert strategy.calls == per_step * 2


def test_an_uneven_window_is_renormalised_by_the_driver():
    strategy = RecordingStrategy()
    trainer = Trainer(strategy=strategy, max_epochs=1, accumulate_grad_batches=2, **_quiet())
    trainer.fit(BoringModel(), regression_loader(n=24, batch_size=8))  # 3 batches: the last window is short
    assert trainer.strategy.calls.count("renormalise") == 1 and trainer.global_step == 2


class ManualModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="value")
        opt.step()
        opt.step()  # two steps in one batch: each counts, as in Lightning
        opt.zero_grad()
        return loss


def test_manual_optimization_steps_through_the_engine_and_counts_each_step():
    strategy = RecordingStrategy()
    trainer = Trainer(strategy=strategy, max_epochs=1, limit_train_batches=3, **_quiet())
    trainer.fit(ManualModel(), regression_loader(n=32))
    assert trainer.strategy.calls == ["backward", "unscale", "clip_value", "step", "step", "zero_grad"] * 3
    assert trainer.global_step == 6 and trainer.accelerator.engine.progress.global_step == 6


def test_a_fp16_step_with_inf_gradients_is_a_skipped_step_result():
    torch.manual_seed(0)
    engine = StepEngine(SingleDeviceStrategy("cpu", precision="16-mixed"))
    engine.strategy.setup()
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    engine.backward(model(torch.ones(1, 2)).sum())
    assert engine.step(opt) is STEPPED and not torch.equal(before, model.weight)
    engine.zero_grad(opt)
    after_good = model.weight.detach().clone()
    engine.backward(model(torch.full((1, 2), float("inf"))).sum())
    result = engine.step(opt)
    assert isinstance(result, StepResult) and result.skipped and not result.stepped
    assert "inf/nan" in result.reason and torch.equal(after_good, model.weight)
    assert engine.progress.global_step == 2  # a skipped step still counts, as before


def test_the_accelerator_reads_skipped_steps_from_the_step_result():
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    model = torch.nn.Linear(2, 1)
    model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    accelerator.backward(model(torch.full((1, 2), float("inf"))).sum())
    opt.step()
    assert accelerator.optimizer_step_was_skipped
    opt.zero_grad()
    accelerator.backward(model(torch.ones(1, 2)).sum())
    opt.step()
    assert not accelerator.optimizer_step_was_skipped


def test_the_engines_plan_changes_only_through_its_methods():
    engine = StepEngine(SingleDeviceStrategy("cpu"))
    with pytest.raises(AttributeError):
        engine.accumulation_steps = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        engine.item_weight = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"plan\(accumulation=0\): expected an int >= 1"):
        engine.plan(accumulation=0)
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    engine.plan(accumulation=3, optimizers=[opt])
    with engine.planned(accumulation=1, optimizers=[]) as planned:
        assert planned.accumulation_steps == 1 and planned.optimizers == []
        planned.begin_micro(1, False)
    assert engine.accumulation_steps == 3 and engine.optimizers == [opt] and not engine.in_window
    engine.weigh_items(0.25)
    assert engine.item_weight == 0.25


def test_nothing_outside_the_engine_writes_its_attributes_or_tests_a_strategy_flag():
    writes = re.compile(r"\bengine\.(\w+\.)*\w+\s*=[^=]|\bengine\.\w+\.(append|clear|extend)\(")
    flags = re.compile(r"\b(has_engine|supports_gradient_correction|distributed_kind|setup_engine)\b")
    offenders = []
    for folder in ("trainer", "callbacks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "trainer/engine/step_engine.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if writes.search(line) or flags.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


class FSDPLike(Strategy):
    """A strategy that says it shards like FSDP (without sharding anything)."""

    root_device = torch.device("cpu")
    distributed_type = "FSDP"


def test_accelerates_distributed_type_is_the_strategys_answer():
    assert Accelerator(strategy=FSDPLike()).distributed_type is DistributedType.FSDP
    assert Accelerator(cpu=True).distributed_type is DistributedType.NO


def test_deepspeeds_driver_before_its_engine_says_what_to_do():
    from trainer.strategies import DeepSpeedStrategy

    driver = DeepSpeedStrategy().driver()
    with pytest.raises(RuntimeError, match=r"no engine yet: prepare the model and its optimizer together"):
        driver.step(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"pass exactly one model and its optimizer together \(got 1 model\(s\) "
                                         r"and 0 optimizer\(s\)\)"):
        DeepSpeedStrategy().prepare([torch.nn.Linear(1, 1)], [])


def test_the_trainer_builds_its_runtime_over_one_resolved_strategy(monkeypatch):
    import trainer.accelerate.arguments as arguments
    import trainer.trainer as trainer_module

    resolved: list[object] = []
    for module in (trainer_module, arguments):
        original = module.resolve_strategy
        monkeypatch.setattr(module, "resolve_strategy",
                            lambda *a, _original=original, **k: resolved.append(_original(*a, **k)) or resolved[-1])

    def user_constructor(self, *args, **kwargs):
        raise AssertionError("the Trainer went through Accelerator's user constructor")

    monkeypatch.setattr(Accelerator, "__init__", user_constructor)
    trainer = Trainer(strategy="auto", precision="bf16-mixed", max_steps=1, **_quiet())
    assert resolved == [trainer.strategy] and trainer.accelerator.strategy is trainer.strategy
    assert trainer.accelerator.gradient_accumulation_steps == 1 and trainer.accelerator.device_placement
    trainer.fit(BoringModel(), regression_loader(n=16))
    assert trainer.global_step == 1


def test_the_runtime_for_a_strategy_refuses_a_name():
    with pytest.raises(TypeError, match=r"for_strategy\('ddp'\): expected a Strategy object.*Accelerator\(strategy="):
        Accelerator.for_strategy("ddp")  # type: ignore[arg-type]


class PreparingStrategy(SingleDeviceStrategy):
    """Keeps the driver its last ``prepare`` returned."""

    def prepare(self, models, optimizers):
        models, optimizers, self.returned = super().prepare(models, optimizers)
        return models, optimizers, self.returned


def test_the_trainers_engine_drives_the_driver_its_strategy_prepared_the_optimizers_with():
    # DeepSpeed's driver wraps the engine it builds over the module and the optimizer, so the engine must
    # drive the driver prepare() returned, not one made before anything was prepared
    strategy = PreparingStrategy("cpu")
    trainer = Trainer(strategy=strategy, max_steps=1, **_quiet())
    trainer.fit(BoringModel(), regression_loader(n=16))
    assert trainer.accelerator.engine.driver is trainer.strategy.returned
    accelerator = Accelerator(strategy=PreparingStrategy("cpu"))
    model = torch.nn.Linear(1, 1)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert accelerator.engine.driver is accelerator.strategy.returned
