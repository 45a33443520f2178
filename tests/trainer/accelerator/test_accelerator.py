"""The Accelerator door: the seed's hand-written loop pattern on the same engine."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader, TensorDataset

from trainer import Accelerator
from trainer.utils import set_seed


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


def _hand_loop(accelerator, model, opt, sched, loader, epochs=1):
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    steps = 0
    for _ in range(epochs):
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    steps += 1
                opt.step()
                sched.step()
                opt.zero_grad()
    return model, steps


@settings(max_examples=20, deadline=None)
@given(n_batches=st.integers(1, 11), k=st.integers(1, 4), epochs=st.integers(1, 2))
def test_accumulate_equals_the_big_batch_and_steps_once_per_window(n_batches, k, epochs):
    x, y = _data(n_batches * 2, seed=n_batches)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=k)
    model, steps = _hand_loop(accelerator, model, opt, sched, DataLoader(TensorDataset(x, y), batch_size=2), epochs)
    windows = -(-n_batches // k)
    assert steps == windows * epochs
    assert sched.last_epoch == windows * epochs  # the scheduler counts optimizer steps

    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.9)
    for _ in range(epochs):
        for w in range(windows):
            lo, hi = w * k * 2, min((w + 1) * k * 2, len(x))
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(reference(x[lo:hi]), y[lo:hi]).backward()
            ref_opt.step()
            ref_sched.step()
    torch.testing.assert_close(model.weight, reference.weight, atol=1e-6, rtol=1e-5)


def test_prepare_returns_what_it_does_not_need_to_change():
    accelerator = Accelerator(cpu=True)
    thing = {"not": "a torch object"}
    model = torch.nn.Linear(2, 2)
    out_model, out_thing = accelerator.prepare(model, thing)
    assert out_thing is thing
    assert accelerator.unwrap_model(out_model) is model
    assert accelerator.prepare(model) is model  # one argument, one object back


def test_prepared_loader_moves_batches_and_optimizer_steps_through_the_scaler():
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    assert accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu"
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(64)
    model, opt, loader = accelerator.prepare(model, opt, DataLoader(TensorDataset(x, y), batch_size=2))
    before = model.weight.detach().clone()
    norms = []
    for xb, yb in loader:
        with accelerator.autocast():
            out = model(xb)
        assert out.dtype == torch.float16
        accelerator.backward(torch.nn.functional.mse_loss(out.float(), yb))
        norms.append(float(accelerator.clip_grad_norm_(model.parameters(), 1e6)))
        accelerator.clip_grad_norm_(model.parameters(), 1e6)  # a second unscale in one step is harmless
        opt.step()
        opt.zero_grad()
    # the first steps overflow fp16 at scale 2**16 and are skipped; once the scaler backs off,
    # the clipped norm is the true one (not multiplied by the scale)
    finite = [n for n in norms if n == n and n != float("inf")]
    assert finite and max(finite) < 1e2
    assert accelerator.strategy.precision.scaler.get_scale() < 2.0**16
    assert not torch.equal(before, model.weight)


def test_bf16_autocast_and_main_process_helpers(capsys):
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    with accelerator.autocast():
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
    assert accelerator.is_main_process and accelerator.num_processes == 1 and accelerator.process_index == 0
    accelerator.print("hello once")
    assert capsys.readouterr().out == "hello once\n"
    t = torch.arange(3.0)
    assert torch.equal(accelerator.gather(t), t)
    assert torch.equal(accelerator.reduce(t, "sum"), t)
    with accelerator.main_process_first():
        pass
    accelerator.wait_for_everyone()


def test_set_seed_reproduces():
    set_seed(123)
    a = torch.randn(3)
    set_seed(123)
    assert torch.equal(a, torch.randn(3))


@pytest.mark.parametrize("kwargs, match", [
    ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps=0.*positive int"),
    ({"mixed_precision": "fp8"}, r"unknown precision.*'16-mixed'"),
    ({"log_with": "wandbb"}, r"log_with='wandbb'.*unknown tracker.*'tensorboard', 'wandb', 'mlflow', 'csv'.*'wandb'\?"),
    ({"log_with": ["csv", 3]}, r"log_with=3.*unknown tracker"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, NotImplementedError), match=match):
        Accelerator(cpu=True, **kwargs)
