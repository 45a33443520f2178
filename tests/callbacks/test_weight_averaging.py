"""StochasticWeightAveraging and WeightAveraging / EMAWeightAveraging give the averaged weights of a plain
PyTorch loop with torch.optim.swa_utils (AveragedModel, SWALR, update_bn) on the same run, swap them in for
validation, are checkpointed and resumed exactly, run on 2 processes, and are refused by sharded strategies."""

from __future__ import annotations

import pytest
import torch
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_avg_fn, update_bn

from trainer import Trainer
from trainer.callbacks import Callback, EMAWeightAveraging, LambdaCallback, StochasticWeightAveraging
from tests.helpers import BoringModel, RandomRegression, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.models import rank_shard_loader
from tests.helpers.trainers import LEAN


class Net(BoringModel):
    def __init__(self, batch_norm: bool = False, seed: int = 0):
        super().__init__(seed=seed)
        torch.manual_seed(seed)
        norm = torch.nn.BatchNorm1d(8) if batch_norm else torch.nn.Identity()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), norm, torch.nn.Tanh())
        self.layer = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.layer(self.body(x))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for t in tensors])


def _state(model) -> torch.Tensor:
    return _flat([*model.parameters(), *model.buffers()])


def _batches(n: int, batch: int):
    data = RandomRegression(n)
    return [(data.x[i:i + batch], data.y[i:i + batch]) for i in range(0, n, batch)]


def _train_epoch(model, opt, batches, after_step=None):
    model.train()
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if after_step is not None:
            after_step()


# -- EMA ----------------------------------------------------------------------------------------------------

def _ema_reference(epochs: int = 2, n: int = 48, batch: int = 8, decay: float = 0.8, batch_norm: bool = True):
    model = Net(batch_norm=batch_norm)
    opt, sched = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), None
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ema = AveragedModel(model, avg_fn=get_ema_avg_fn(decay), use_buffers=True)
    for _ in range(epochs):
        _train_epoch(model, opt, _batches(n, batch), lambda: ema.update_parameters(model))
        sched.step()
    return _state(model), _state(ema.module)


class _SeesWeights(Callback):
    def __init__(self):
        self.in_validation = []

    def on_validation_epoch_start(self, trainer, module):
        self.in_validation.append(_state(module))


def test_ema_equals_averaged_model_updated_after_every_step_and_is_swapped_in_for_validation(make_trainer):
    model, seen = Net(batch_norm=True), _SeesWeights()
    make_trainer(max_epochs=2, callbacks=[EMAWeightAveraging(decay=0.8), seen], **LEAN).fit(
        model, regression_loader(48, 8), regression_loader(16, 8))
    trained, averaged = _ema_reference()
    torch.testing.assert_close(_state(model), averaged, rtol=1e-6, atol=1e-6)  # the module ends on the average
    torch.testing.assert_close(seen.in_validation[-1], averaged, rtol=1e-6, atol=1e-6)  # validation saw it
    assert not torch.allclose(trained, averaged)


def test_ema_update_schedule_follows_lightnings_should_update():
    ema = EMAWeightAveraging(update_every_n_steps=3, update_starting_at_step=5, update_starting_at_epoch=2)
    assert [s for s in range(12) if ema.should_update(step_idx=s)] == [6, 9]
    assert [e for e in range(4) if ema.should_update(epoch_idx=e)] == [2, 3]
    with pytest.raises(ValueError, match=r"EMAWeightAveraging\(decay=1.5\): expected a number in \[0, 1\]"):
        EMAWeightAveraging(decay=1.5)


def _save_at(step: int, path):
    """Save a checkpoint from inside training, after the step's averaging (it comes later in the list)."""
    def save(trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == step and not trainer.is_accumulating and not path.exists():
            trainer.save_checkpoint(str(path))
    return LambdaCallback(on_train_batch_end=save)


def test_ema_checkpoint_holds_the_average_and_resumes_exactly(make_trainer, tmp_path):
    full, path = Net(batch_norm=True), tmp_path / "mid.ckpt"
    make_trainer(max_epochs=3, callbacks=[EMAWeightAveraging(decay=0.8), _save_at(8, path)], **LEAN).fit(
        full, regression_loader(48, 8))
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["current_model_state"]) == set(ckpt["state_dict"]) and "n_averaged" in ckpt["averaging_state"]
    assert not torch.equal(ckpt["current_model_state"]["layer.weight"], ckpt["state_dict"]["layer.weight"])
    resumed = Net(batch_norm=True, seed=5)
    make_trainer(max_epochs=3, callbacks=[EMAWeightAveraging(decay=0.8)], **LEAN).fit(
        resumed, regression_loader(48, 8), ckpt_path=str(path))
    assert torch.equal(_state(resumed), _state(full))


# -- SWA ----------------------------------------------------------------------------------------------------

def _swa_reference(batch_norm: bool, epochs: int = 4, start: int = 2, n: int = 48, batch: int = 8):
    """Lightning's SWA in plain PyTorch: from epoch `start` (from 1) SWALR replaces the scheduler and the weights
    at each epoch's start join an AveragedModel; the module ends on the average (BatchNorm recomputed)."""
    model = Net(batch_norm=batch_norm)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    swa = AveragedModel(model)
    for epoch in range(epochs):
        if epoch >= start - 1:
            if not isinstance(sched, SWALR):
                for group in opt.param_groups:
                    group["initial_lr"] = 0.05
                sched = SWALR(opt, swa_lr=[0.05], anneal_epochs=2, anneal_strategy="cos", last_epoch=epochs)
            swa.update_parameters(model)
        _train_epoch(model, opt, _batches(n, batch))
        sched.step()
    with torch.no_grad():
        for a, p in zip(swa.module.parameters(), model.parameters()):
            p.copy_(a)
    if batch_norm:
        update_bn([x for x, _ in _batches(n, batch)], model)
    return _state(model)


def _swa():
    return StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=2)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_swa_equals_swa_utils_on_the_same_run(make_trainer, batch_norm):
    model, rates = Net(batch_norm=batch_norm), []

    class Rates(Callback):
        def on_train_epoch_end(self, trainer, module):
            rates.append(round(trainer.optimizer.param_groups[0]["lr"], 6))

    make_trainer(max_epochs=4, callbacks=[_swa(), Rates()], **LEAN).fit(model, regression_loader(48, 8))
    torch.testing.assert_close(_state(model), _swa_reference(batch_norm), rtol=1e-6, atol=1e-6)
    assert rates[0] == 0.1 and rates[-1] == 0.05  # the StepLR, then SWALR at swa_lrs


def test_swa_resumes_exactly_inside_the_averaging(make_trainer, tmp_path):
    full, path = Net(batch_norm=True), tmp_path / "mid.ckpt"
    make_trainer(max_epochs=4, callbacks=[_swa(), _save_at(15, path)], **LEAN).fit(full, regression_loader(48, 8))
    assert torch.load(path, weights_only=True)["callbacks"]["StochasticWeightAveraging"]["n_averaged"] == 2
    resumed = Net(batch_norm=True, seed=5)
    make_trainer(max_epochs=4, callbacks=[_swa()], **LEAN).fit(resumed, regression_loader(48, 8), ckpt_path=str(path))
    assert torch.equal(_state(resumed), _state(full))


def test_swa_bad_arguments_and_sharded_strategies_are_refused(make_trainer):
    with pytest.raises(ValueError, match=r"swa_epoch_start=0\): out of range. Pass an int >= 1"):
        StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0)
    with pytest.raises(ValueError, match=r"swa_lrs=-1.0\): expected a positive float"):
        StochasticWeightAveraging(swa_lrs=-1.0)
    with pytest.raises(ValueError, match=r"annealing_strategy='exp'\): expected 'cos' or 'linear'"):
        StochasticWeightAveraging(swa_lrs=0.1, annealing_strategy="exp")
    trainer = make_trainer(max_epochs=1, strategy="fsdp")
    for callback in (_swa(), EMAWeightAveraging()):
        with pytest.raises(ValueError, match=f"{type(callback).__name__} with FSDPStrategy: each process holds only"):
            callback.setup(trainer, Net(), "fit")


def _ddp_worker():
    models = {"swa": Net(), "ema": Net(), "swa_bn": Net(batch_norm=True)}
    for name, callback in (("swa", _swa()), ("ema", EMAWeightAveraging(decay=0.8)), ("swa_bn", _swa())):
        Trainer(max_epochs=2 if name == "ema" else 4, accelerator="cpu", strategy="ddp", logger=False,
                use_distributed_sampler=False, enable_progress_bar=False, callbacks=[callback], **LEAN).fit(
            models[name], rank_shard_loader(96, 4))
    return {name: _state(model).tolist() for name, model in models.items()}


@pytest.mark.slow
def test_two_processes_give_the_one_process_averages():
    """2 x batch 4 gives 1 x batch 8's averages; with BatchNorm (whose training statistics are per batch, so
    not comparable with one process) both ranks end equal, the recomputed statistics averaged over them."""
    ranks = run_distributed(_ddp_worker)
    assert ranks[0] == ranks[1]
    torch.testing.assert_close(torch.tensor(ranks[0]["swa"]), _swa_reference(False, n=96), rtol=1e-5, atol=1e-6)
    ema_one = _ema_reference(n=96, batch_norm=False)[1]
    torch.testing.assert_close(torch.tensor(ranks[0]["ema"]), ema_one, rtol=1e-5, atol=1e-6)
