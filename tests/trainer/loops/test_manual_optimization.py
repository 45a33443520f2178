"""Manual optimization and several optimizers (Lightning's `automatic_optimization = False`).

A GAN written in Lightning's idiom (two optimizers, toggling, clipping, schedulers stepped by the
module) is checked against a plain PyTorch loop doing the same arithmetic, in one process, in two
DDP processes (gloo) and across an interruption (resume is exact)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainer import TrainModule
from trainer.callbacks import Callback
from trainer.loops.manual import ModuleOptimizer
from trainer.strategies.checkpoint_io import safe_load
from tests.helpers.distributed import run_distributed
from tests.helpers.models import BoringModel, regression_loader
from tests.helpers.trainers import LEAN, quiet_trainer

LATENT, DIM = 4, 3


def _nets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(LATENT, 8), nn.Tanh(), nn.Linear(8, DIM))
    d = nn.Sequential(nn.Linear(DIM, 8), nn.Tanh(), nn.Linear(8, 1))
    return g, d


def _optimizers(g: nn.Module, d: nn.Module) -> tuple[list, list]:
    g_opt = torch.optim.SGD(g.parameters(), lr=0.05, momentum=0.9)
    d_opt = torch.optim.SGD(d.parameters(), lr=0.1, momentum=0.5)
    scheds = [torch.optim.lr_scheduler.StepLR(g_opt, 1, gamma=0.7), torch.optim.lr_scheduler.StepLR(d_opt, 1, 0.8)]
    return [g_opt, d_opt], scheds


def _data(n: int = 24) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(n, DIM, generator=gen) * 0.5 + 1.0
    noise = torch.randn(n, LATENT, generator=gen)  # the noise travels with the data: same draws everywhere
    return TensorDataset(real, noise)


def _gan_arithmetic(g, d, real, z, g_opt, d_opt, backward, clip,
                    toggle=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
    fake = g(z)
    with toggle(d_opt):
        d_loss, g_loss = _d_step(d, real, fake, d_opt, backward, clip, ones, zeros)
    with toggle(g_opt):
        g_loss = F.binary_cross_entropy_with_logits(d(fake), ones)
        g_opt.zero_grad()
        backward(g_loss)
        g_opt.step()
    return d_loss, g_loss


def _d_step(d, real, fake, d_opt, backward, clip, ones, zeros):
    d_loss = F.binary_cross_entropy_with_logits(d(real), ones) + \
        F.binary_cross_entropy_with_logits(d(fake.detach()), zeros)
    d_opt.zero_grad()
    backward(d_loss)
    clip(d_opt)
    d_opt.step()
    return d_loss, None


class GAN(TrainModule):
    """Lightning's GAN pattern: two optimizers stepped in training_step."""

    def __init__(self, shape: str = "lists"):
        super().__init__()
        self.automatic_optimization = False
        self.G, self.D = _nets()
        self.shape = shape

    def training_step(self, batch, batch_idx):
        real, z = batch
        g_opt, d_opt = self.optimizers()
        assert isinstance(g_opt, ModuleOptimizer)

        def clip(opt):
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")

        # toggled: only the stepping optimizer's parameters get gradients
        d_loss, g_loss = _gan_arithmetic(self.G, self.D, real, z, g_opt, d_opt, self.manual_backward, clip,
                                         self.toggled_optimizer)
        if self.trainer.is_last_batch:
            for sched in self.lr_schedulers():
                sched.step()
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def configure_optimizers(self):
        opts, scheds = _optimizers(self.G, self.D)
        if self.shape == "lists":
            return opts, scheds
        return [{"optimizer": o, "lr_scheduler": {"scheduler": s, "interval": "epoch"}} for o, s in zip(opts, scheds)]


def _reference(batch_size: int, epochs: int, distributed_order: bool = False) -> list[list]:
    """The same arithmetic in a plain loop. ``distributed_order``: read the permutation the Trainer's
    DistributedSampler deals on several processes (shuffle=True, seed 0, set_epoch each epoch)."""
    g, d = _nets()
    (g_opt, d_opt), scheds = _optimizers(g, d)
    data = _data()
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0) \
        if distributed_order else None
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for real, z in loader:
            _gan_arithmetic(g, d, real, z, g_opt, d_opt, lambda loss: loss.backward(),
                            lambda opt: torch.nn.utils.clip_grad_norm_(d.parameters(), 0.5))
        for s in scheds:
            s.step()
    return [p.detach().tolist() for p in [*g.parameters(), *d.parameters()]]


def _weights(model: GAN) -> list[list]:
    return [p.detach().tolist() for p in [*model.G.parameters(), *model.D.parameters()]]


def _assert_equal(got: list[list], want: list[list]) -> None:
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", ["lists", "dicts"])
def test_gan_in_manual_mode_equals_a_plain_loop(shape, make_trainer):
    model = GAN(shape)
    trainer = make_trainer(max_epochs=2, **LEAN)
    trainer.fit(model, DataLoader(_data(), batch_size=4))
    _assert_equal(_weights(model), _reference(batch_size=4, epochs=2))
    assert trainer.global_step == 2 * 2 * 6  # two optimizer steps per batch, as in Lightning
    assert len(trainer.optimizers) == 2 and len(trainer.lr_scheduler_configs) == 2
    assert set(trainer.callback_metrics) >= {"d_loss", "g_loss"}
    # the module stepped its own schedulers (once per epoch), the loop did not step them again
    assert [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs] == [2, 2]


def test_without_the_module_stepping_nothing_changes(make_trainer):
    """In manual mode the Trainer neither backwards nor steps: a step that only computes a loss
    leaves the weights alone (a loop that stepped for the module would move them)."""

    class Idle(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)

    model = Idle()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(max_epochs=1, **LEAN)
    trainer.fit(model, regression_loader(16, 4))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trainer.global_step == 0 and all(p.grad is None for p in model.parameters())


def test_toggle_optimizer_freezes_the_other_optimizers_parameters_and_restores_them(make_trainer):
    seen = {}

    class Toggling(GAN):
        def training_step(self, batch, batch_idx):
            g_opt, d_opt = self.optimizers()
            self.G[0].bias.requires_grad_(False)  # the user's own frozen parameter stays frozen
            with self.toggled_optimizer(d_opt):
                seen["inside"] = ([p.requires_grad for p in self.G.parameters()],
                                  [p.requires_grad for p in self.D.parameters()])
            seen["after"] = [p.requires_grad for p in self.G.parameters()]
            self.trainer.should_stop = True

    make_trainer(max_epochs=2, **LEAN).fit(Toggling(), DataLoader(_data(), batch_size=4))
    assert seen["inside"] == ([False] * 4, [True] * 4)
    assert seen["after"] == [True, False, True, True]


def test_step_with_a_closure_and_hooks_in_manual_mode(make_trainer):
    """`opt.step(closure)` runs the closure (LBFGS calls it several times); the backward and
    optimizer-step hooks fire from manual_backward and step."""
    calls = []

    class Hooks(Callback):
        def on_before_backward(self, trainer, module, loss):
            calls.append("before_backward")

        def on_after_backward(self, trainer, module):
            calls.append("after_backward")

        def on_before_optimizer_step(self, trainer, module, optimizer):
            calls.append("before_optimizer_step")

    class WithClosure(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()

            def closure():
                loss = super(WithClosure, self).training_step(batch, batch_idx)
                opt.zero_grad()
                self.manual_backward(loss)
                return loss

            return opt.step(closure=closure)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)

    model = WithClosure()
    trainer = make_trainer(max_epochs=1, callbacks=[Hooks()], **LEAN)
    trainer.fit(model, regression_loader(8, 8))
    assert trainer.global_step == 1
    assert len(calls) >= 6 and calls[:3] == ["before_backward", "after_backward", "before_optimizer_step"]


def test_manual_mode_under_16_mixed_goes_through_the_scaler(make_trainer):
    class Scaled(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=1e9)  # unscales: the gradients are true ones again
            self.seen_grad = self.layer.weight.grad.clone()
            opt.step()

    model = Scaled()
    trainer = make_trainer(max_epochs=1, precision="16-mixed", **LEAN)
    x, y = (t * 0.01 for t in regression_loader(8, 8).dataset[:])  # small: no overflow at the first scale
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
    scaler = trainer.strategy.precision.scaler
    assert scaler is not None and scaler._get_growth_tracker() == 1  # one step, one update
    reference = BoringModel()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.mse_loss(reference(x), y)
    loss.backward()
    torch.testing.assert_close(model.seen_grad, reference.layer.weight.grad, atol=1e-2, rtol=1e-2)


# -- resume ---------------------------------------------------------------------------------------

class StopAfter(Callback):
    def __init__(self, batches: int):
        self.batches = batches

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.state.batches_seen == self.batches:
            trainer.save_checkpoint("mid.ckpt")
            raise KeyboardInterrupt  # an interruption, right after the checkpoint


def test_gan_resume_is_exact(tmp_path, make_trainer):
    """Both optimizers' momentum, both schedulers and the position are in the checkpoint."""
    loader = lambda: DataLoader(_data(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    whole = GAN()
    make_trainer(max_epochs=3, **LEAN).fit(whole, loader())

    torch.manual_seed(5)
    first = GAN()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(max_epochs=3, callbacks=[StopAfter(8)], **LEAN).fit(first, loader())
    ckpt = safe_load("mid.ckpt")
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert ckpt["loops"]["global_step"] == 16 and ckpt["loops"]["batch_idx"] == 2
    assert all(s["state"] for s in ckpt["optimizer_states"])  # momentum buffers of both

    resumed = GAN()
    trainer = make_trainer(max_epochs=3, **LEAN)
    trainer.fit(resumed, loader(), ckpt_path="mid.ckpt")
    assert trainer.global_step == 2 * 3 * 6
    assert _weights(resumed) == _weights(whole)  # bit-exact


# -- several processes ----------------------------------------------------------------------------

def _ddp_gan_worker():
    import io

    model = GAN()
    trainer = quiet_trainer(enable_model_summary=True, max_epochs=2, **LEAN)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        trainer.fit(model, DataLoader(_data(), batch_size=2))
    assert trainer.world_size == 2
    return {"weights": _weights(model), "steps": trainer.global_step, "summary": "Total params" in out.getvalue()}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gan_in_two_ddp_processes_equals_one_process_with_the_whole_batch():
    """Each process runs 2 samples; manual_backward averages the gradients, so clipping and both
    steps see the 4-sample gradient (the DDP reducer is not used: a GAN runs two backward calls).
    The processes read the training data shuffled (as Lightning's use_distributed_sampler); one
    process with the whole batch reads the same permutation."""
    ranks = run_distributed(_ddp_gan_worker, world_size=2)
    want = _reference(batch_size=4, epochs=2, distributed_order=True)
    for rank in ranks:
        assert rank["steps"] == 2 * 2 * 6
        _assert_equal(rank["weights"], want)
    assert [rank["summary"] for rank in ranks] == [True, False]  # the model summary prints on rank zero only


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, pattern", [
    ({"accumulate_grad_batches": 4}, r"Trainer\(accumulate_grad_batches=4\) with manual optimization \(GAN\."
                                     r"automatic_optimization = False\).*step every 4 batches in training_step"),
    ({"gradient_clip_val": 0.5}, r"Trainer\(gradient_clip_val=0.5\) with manual optimization .*"
                                 r"self\.clip_gradients\(opt, gradient_clip_val=0.5, gradient_clip_algorithm='norm'\)"),
])
def test_trainer_refuses_accumulation_and_clipping_in_manual_mode(setting, pattern, make_trainer):
    model = GAN()
    with pytest.raises(ValueError, match=pattern):
        make_trainer(**setting, max_epochs=2, **LEAN).fit(model, DataLoader(_data(), batch_size=4))
    assert model._trainer is None  # refused before anything was set up


@pytest.mark.parametrize("returned", [
    lambda m: [torch.optim.SGD(m.G.parameters(), 0.1), torch.optim.SGD(m.D.parameters(), 0.1)],
    lambda m: ([torch.optim.SGD(m.G.parameters(), 0.1), torch.optim.SGD(m.D.parameters(), 0.1)], []),
    lambda m: ({"optimizer": torch.optim.SGD(m.G.parameters(), 0.1)},
               {"optimizer": torch.optim.SGD(m.D.parameters(), 0.1)}),
], ids=["list", "two-lists", "tuple-of-dicts"])
def test_several_optimizers_in_automatic_mode_are_refused_with_a_pointer_to_manual(returned, make_trainer):
    class Auto(GAN):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = True

        def training_step(self, batch, batch_idx):
            return self.D(self.G(batch[1])).mean()

        def configure_optimizers(self):
            return returned(self)

    with pytest.raises(ValueError, match=r"Auto\.configure_optimizers\(\) returned 2 optimizers \(SGD, SGD\), but "
                                         r"automatic optimization steps exactly one\. .*"
                                         r"self\.automatic_optimization = False"):
        make_trainer(max_epochs=2, **LEAN).fit(Auto(), DataLoader(_data(), batch_size=4))


def test_manual_backward_in_automatic_mode_is_refused(make_trainer):
    class Confused(BoringModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            return loss

    with pytest.raises(RuntimeError, match=r"Confused\.manual_backward\(loss\) is for manual optimization.*"
                                           r"self\.automatic_optimization = False"):
        make_trainer(max_epochs=1, **LEAN).fit(Confused(), regression_loader(8, 4))


def test_clip_gradients_refuses_an_unknown_algorithm(make_trainer):
    class BadClip(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            self.clip_gradients(self.optimizers(), 1.0, "l2")

    with pytest.raises(ValueError, match=r"clip_gradients\(gradient_clip_algorithm='l2'\): expected 'norm' or 'value'"):
        make_trainer(max_epochs=1, **LEAN).fit(BadClip(), regression_loader(8, 4))


def test_optimizers_outside_a_trainer_is_refused():
    with pytest.raises(RuntimeError, match=r"GAN\.optimizers\(\): this module is not attached to a Trainer"):
        GAN().optimizers()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_deepspeed_refuses_manual_optimization_with_the_reason(monkeypatch, make_trainer):
    from tests.helpers.distributed import free_port
    from trainer.strategies import DeepSpeedStrategy

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    trainer = make_trainer(strategy=DeepSpeedStrategy(zero_stage=2, timeout=60), max_epochs=2, **LEAN)
    with pytest.raises(ValueError, match=r"DeepSpeedStrategy with manual optimization \(GAN\.automatic_optimization = "
                                         r"False\): not supported\. DeepSpeed's engine is built around one optimizer"):
        trainer.fit(GAN(), DataLoader(_data(), batch_size=4))


def test_manual_mode_may_define_the_step_hooks_with_its_own_signatures(make_trainer):
    """optimizer_step / optimizer_zero_grad / backward are called by the loop only in automatic
    optimization; a manual module may define them, e.g. as helpers it calls itself."""

    class Manual(BoringModel):
        automatic_optimization = False

        def backward(self, loss):
            self.manual_backward(loss)

        def optimizer_step(self, opt):
            opt.step()

        def optimizer_zero_grad(self, opt):
            opt.zero_grad()

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            self.backward(loss)
            self.optimizer_step(opt)
            self.optimizer_zero_grad(opt)

    model = Manual()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, regression_loader(16, 8))
    assert trainer.global_step == 2 and not all(torch.equal(o, n) for o, n in zip(before, model.parameters()))
