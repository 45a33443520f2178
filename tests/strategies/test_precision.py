"""Precision: autocast for *-mixed, a gradient scaler for 16-mixed (an overflow skips the step),
bf16 parameters and inputs for bf16-true, clipping after unscaling, and refused combinations."""

from __future__ import annotations

import collections
import copy
import dataclasses

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import Callback
from trainer.strategies import Precision, SingleDeviceStrategy
from trainer import Trainer, TrainModule
from tests.helpers import BoringModel, regression_loader


class DtypeProbe(BoringModel):
    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.seen = (x.dtype, out.dtype, self.layer.weight.dtype, torch.is_autocast_enabled("cpu"))
        return torch.nn.functional.mse_loss(out.float(), y.float())


@pytest.mark.parametrize("precision, expected", [
    ("32-true", (torch.float32, torch.float32, torch.float32, False)),
    ("bf16-mixed", (torch.float32, torch.bfloat16, torch.float32, True)),
    ("16-mixed", (torch.float32, torch.float16, torch.float32, True)),
    ("bf16-true", (torch.bfloat16, torch.bfloat16, torch.bfloat16, False)),
])
def test_forward_dtypes_follow_the_precision(precision, expected, make_trainer):
    model = DtypeProbe()
    make_trainer(precision=precision, max_steps=1, max_epochs=1, num_sanity_val_steps=0).fit(model, regression_loader())
    assert model.seen == expected


@pytest.mark.parametrize("alias, name", [("bf16", "bf16-mixed"), ("16", "16-mixed"), (16, "16-mixed"),
                                         ("fp16", "16-mixed"), ("32", "32-true"), ("no", "32-true")])
def test_precision_aliases(alias, name, make_trainer):
    assert Precision.from_string(alias).name == name
    assert make_trainer(precision=alias, max_epochs=1, num_sanity_val_steps=0).precision == name


class HugeLoss(TrainModule):
    """Finite loss whose scaled gradient overflows on chosen batches."""

    def __init__(self, overflow_at=(1,)):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.overflow_at = overflow_at

    def training_step(self, batch, batch_idx):
        (x,) = batch
        factor = 1e35 if batch_idx in self.overflow_at else 1.0
        return (self.w * x).sum() * factor

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_16_mixed_skips_a_step_whose_gradients_overflow_and_does_not_stop(make_trainer):
    loader = DataLoader(TensorDataset(torch.ones(3, 2)), batch_size=1)
    model = HugeLoss(overflow_at=(1,))
    trainer = make_trainer(precision="16-mixed", max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, loader)
    scaler = trainer.strategy.precision.scaler
    assert isinstance(scaler, torch.amp.GradScaler)
    # batches 0 and 2 step (each moves w by -lr * 1), batch 1 overflowed and was skipped
    torch.testing.assert_close(model.w.detach(), torch.full((2,), 1 - 2 * 0.01))
    assert scaler.get_scale() < 2.0**16  # the scaler backed off after the overflow
    assert trainer.global_step == 3


def test_32_true_applies_the_same_huge_step(make_trainer):
    loader = DataLoader(TensorDataset(torch.ones(3, 2)), batch_size=1)
    model = HugeLoss(overflow_at=(1,))
    make_trainer(precision="32-true", max_epochs=1, num_sanity_val_steps=0).fit(model, loader)
    assert model.w.detach().max() < -1e30  # without a scaler nothing is skipped


class NormProbe(Callback):
    def on_before_zero_grad(self, trainer, module, optimizer):
        grads = [p.grad for p in module.parameters()]
        self.norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        self.max_abs = max(float(g.abs().max()) for g in grads)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_clipping_acts_on_true_gradients_after_unscaling(precision, make_trainer):
    probe = NormProbe()
    model = BoringModel(lr=0.1)
    initial = copy.deepcopy(model.layer)
    make_trainer(precision=precision, max_steps=1, gradient_clip_val=0.01, callbacks=[probe], max_epochs=1,
                 num_sanity_val_steps=0).fit(
        model, regression_loader(batch_size=16))
    assert probe.norm == pytest.approx(0.01, rel=1e-3)
    # the update is lr * clipped gradient: its size is lr * 0.01 whatever the precision
    delta = torch.cat([(model.layer.weight - initial.weight).flatten(), model.layer.bias - initial.bias])
    assert float(delta.detach().norm()) == pytest.approx(0.1 * 0.01, rel=1e-3)


def test_clip_by_value(make_trainer):
    probe = NormProbe()
    model = BoringModel()
    make_trainer(max_steps=1, gradient_clip_val=1e-4, gradient_clip_algorithm="value", callbacks=[probe], max_epochs=1,
                 num_sanity_val_steps=0).fit(
        model, regression_loader(batch_size=16))
    assert probe.max_abs == pytest.approx(1e-4)


def test_16_mixed_refuses_float16_parameters(make_trainer):
    model = BoringModel().half()
    with pytest.raises(ValueError, match=r"16-mixed' needs float32 parameters.*layer.weight.*remove `.half\(\)`"):
        make_trainer(precision="16-mixed", max_epochs=1, num_sanity_val_steps=0).fit(model, regression_loader())


def test_unknown_precision_lists_choices_and_suggests():
    with pytest.raises(ValueError, match=r"precision='bf16-mix'.*'32-true', 'bf16-mixed'.*Did you mean 'bf16-mixed'"):
        Trainer(precision="bf16-mix")


Pair = collections.namedtuple("Pair", "x y")


@dataclasses.dataclass
class Batch:
    features: dict
    target: torch.Tensor
    label: str = "kept"


class NestedProbe(TrainModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        self.seen = batch
        pair, extra = batch
        x = pair.x.features["a"][0] + pair.x.features["b"]
        return ((self.layer(x) - pair.y) ** 2).float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_every_nested_tensor_reaches_the_device_and_the_input_dtype(make_trainer):
    """bf16-true casts floating inputs wherever they are nested; integer tensors keep their dtype."""
    batch = (Pair(Batch({"a": [torch.ones(2, 2)], "b": torch.zeros(2, 2)}, torch.ones(2)), torch.ones(2, 1)),
             [torch.arange(2)])
    model = NestedProbe()
    make_trainer(precision="bf16-true", max_steps=1, max_epochs=1, num_sanity_val_steps=0).fit(model, [batch])
    (pair, extra) = model.seen
    assert isinstance(pair, Pair) and isinstance(pair.x, Batch) and pair.x.label == "kept"
    assert pair.x.features["a"][0].dtype == torch.bfloat16 and pair.x.features["b"].dtype == torch.bfloat16
    assert pair.y.dtype == torch.bfloat16 and extra[0].dtype == torch.int64
    assert {t.device.type for t in (pair.x.features["b"], pair.y, extra[0])} == {"cpu"}


def test_strategy_moves_module_and_optimizer_state_to_its_device():
    """Exercised on the meta device, the one non-CPU device every machine has."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    strategy = SingleDeviceStrategy("meta")
    moved = strategy.setup_module(model)
    strategy.setup_optimizer(opt)
    assert all(p.device.type == "meta" for p in moved.parameters())
    states = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert states and all(v.device.type == "meta" for v in states)
    batch = strategy.batch_to_device({"x": [torch.ones(1)], "y": (torch.zeros(1),)})
    assert batch["x"][0].device.type == "meta" and batch["y"][0].device.type == "meta"
