"""A module's own ``backward`` / ``optimizer_step`` / ``optimizer_zero_grad`` in automatic optimization:
the loop calls them in place of its own, as Lightning does (they were refused before). Overrides that do
what the defaults do train exactly as no override; the accumulation window, clipping and the hooks
around the step keep their place."""

from __future__ import annotations

import pytest
import torch

from trainer.callbacks import Callback
from trainer.strategies.exceptions import MisconfigurationException
from tests.helpers.models import BoringModel, regression_loader
from tests.helpers.trainers import LEAN


class Calls(Callback):
    def __init__(self) -> None:
        self.order: list[str] = []

    def on_before_backward(self, trainer, module, loss):
        self.order.append("before_backward")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.order.append("before_step")

    def on_before_zero_grad(self, trainer, module, optimizer):
        self.order.append("before_zero")


class Plain(BoringModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class Overriding(Plain):
    """Every step hook overridden with what the default does, recording what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def backward(self, loss, *args, **kwargs):
        self.seen.append(("backward", self.trainer.global_step))
        loss.backward(*args, **kwargs)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        lr = optimizer.param_groups[0]["lr"]  # the wrapper reads through to the optimizer
        out = optimizer.step(closure=optimizer_closure)
        self.seen.append(("step", epoch, batch_idx, lr, type(out).__name__))

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        self.seen.append(("zero_grad", epoch, batch_idx))
        optimizer.zero_grad()


def _fit(model, make_trainer, **kw):
    calls = Calls()
    trainer = make_trainer(max_epochs=2, callbacks=[calls], **LEAN, **kw)
    trainer.fit(model, regression_loader(40, 8))  # 5 batches an epoch
    return trainer, calls


@pytest.mark.parametrize("kw", [{}, {"accumulate_grad_batches": 2, "gradient_clip_val": 0.05}])
def test_overrides_doing_the_defaults_train_exactly_as_without_them(kw, make_trainer):
    plain, custom = Plain(), Overriding()
    ref_trainer, ref_calls = _fit(plain, make_trainer, **kw)
    trainer, calls = _fit(custom, make_trainer, **kw)
    for a, b in zip(plain.parameters(), custom.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trainer.global_step == ref_trainer.global_step
    assert calls.order == ref_calls.order  # the hooks keep their order around the module's calls
    k = kw.get("accumulate_grad_batches", 1)
    steps = [s for s in custom.seen if s[0] == "step"]
    # each window's last batch (the epoch's last one closes a short window), the epoch, the closure's loss
    last_batches = [i for i in range(5) if (i + 1) % k == 0 or i == 4]
    assert steps == [("step", e, i, 0.1, "Tensor") for e in range(2) for i in last_batches]
    assert [s[1:] for s in custom.seen if s[0] == "zero_grad"] == [s[1:3] for s in steps]
    assert sum(s[0] == "backward" for s in custom.seen) == 10


def test_backward_override_gets_the_scaled_loss_under_16_mixed(make_trainer):
    got = []

    class Scaled(BoringModel):
        def backward(self, loss):
            got.append((loss.detach().clone(), self.trainer.strategy.precision.scaler.get_scale()))
            loss.backward()

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.raw = loss.detach().clone()
            return loss

    model = Scaled()
    make_trainer(max_steps=1, precision="16-mixed", **LEAN).fit(model, regression_loader(8, 8))
    (loss, scale), = got
    assert scale > 1 and torch.allclose(loss.float(), model.raw.float() * scale)


def test_backward_override_with_retain_graph_runs_each_backward(make_trainer):
    class Twice(BoringModel):
        def backward(self, loss):
            loss.backward(retain_graph=True)  # a second backward through the same graph would fail without it
            (0 * loss).backward()

    make_trainer(max_steps=2, **LEAN).fit(Twice(), regression_loader(16, 8))


def test_optimizer_step_calling_the_closure_alone_skips_the_step(make_trainer):
    class Skip(Plain):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer_closure()

    model = Skip()
    before = [p.detach().clone() for p in model.parameters()]
    trainer, calls = _fit(model, make_trainer, max_steps=3)
    assert trainer.global_step == 0 and calls.order.count("before_step") == 10  # the closure prepared each step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_optimizer_step_never_calling_the_closure_is_refused(make_trainer):
    class Forgets(Plain):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            pass

    model = Forgets()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(MisconfigurationException, match=r"Forgets\.optimizer_step\(epoch=0, batch_idx=0, optimizer, "
                                                        r"optimizer_closure\) returned without calling "
                                                        r"optimizer_closure.*optimizer\.step\(closure=optimizer_closure\)"):
        _fit(model, make_trainer)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_optimizer_zero_grad_override_that_keeps_gradients_accumulates_them(make_trainer):
    class Keeps(Plain):
        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            pass

    model, reference = Keeps(), Plain()
    make_trainer(max_steps=2, **LEAN).fit(model, regression_loader(16, 8))
    assert model.layer.weight.grad is not None  # the default zeroes with set_to_none=True after each step
    x, y = regression_loader(16, 8).dataset[:]
    total = torch.zeros_like(reference.layer.weight)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for xb, yb in ((x[:8], y[:8]), (x[8:], y[8:])):  # the same two steps, the gradient never zeroed
        torch.nn.functional.mse_loss(reference(xb), yb).backward()
        opt.step()
    total = reference.layer.weight.grad
    torch.testing.assert_close(model.layer.weight.grad, total)
    torch.testing.assert_close(model.layer.weight, reference.layer.weight)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_deepspeed_refuses_a_backward_override_at_fit_start_with_the_reason(monkeypatch, make_trainer):
    from tests.helpers.distributed import free_port
    from trainer.strategies import DeepSpeedStrategy

    class OwnBackward(Plain):
        def backward(self, loss):
            loss.backward()

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
        monkeypatch.setenv(name, value)
    model = OwnBackward()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(strategy=DeepSpeedStrategy(zero_stage=2, timeout=60), max_epochs=1, **LEAN)
    with pytest.raises(MisconfigurationException, match=r"OwnBackward\.backward\(\.\.\.\) overridden with "
                                                        r"DeepSpeedStrategy: the engine runs the backward itself.*"
                                                        r"on_before_backward\(loss\) / on_after_backward\(\)"):
        trainer.fit(model, regression_loader(16, 8))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters()))


def _ddp_worker():
    from tests.helpers.trainers import quiet_trainer

    out = {}
    for name, cls in (("plain", Plain), ("overriding", Overriding)):
        model = cls()
        trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=2, gradient_clip_val=0.05, **LEAN)
        trainer.fit(model, regression_loader(40, 4))
        assert trainer.world_size == 2
        out[name] = [p.detach().tolist() for p in model.parameters()]
        out[name + "_steps"] = trainer.global_step
    return out


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_overrides_on_two_ddp_processes_train_as_the_loop_does():
    """The module's backward runs inside the loop's no-sync window (the gradients are all-reduced once per
    window) and its optimizer_step steps through the strategy: the same weights as without overrides."""
    from tests.helpers.distributed import run_distributed

    for rank in run_distributed(_ddp_worker, world_size=2):
        assert rank["overriding"] == rank["plain"] and rank["overriding_steps"] == rank["plain_steps"] == 3
