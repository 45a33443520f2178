"""BaseFinetuning / BackboneFinetuning: the backbone trains from its epoch at its own rate (a plain PyTorch
loop adding the same parameter group gives the same weights), the added groups survive a checkpoint and
resume exactly, and 2 processes give the one-process update."""

from __future__ import annotations

import pytest
import torch

from trainer import Trainer
from trainer.callbacks import BackboneFinetuning, BaseFinetuning
from tests.helpers import BoringModel, RandomRegression, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.models import rank_shard_loader
from tests.helpers.trainers import LEAN


class WithBackbone(BoringModel):
    def __init__(self, seed: int = 0):
        super().__init__(seed=seed)
        torch.manual_seed(seed)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
        self.layer = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.layer(self.backbone(x))

    def configure_optimizers(self):
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1, momentum=0.9)


def _callback():
    return BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_lr=0.01, lambda_func=lambda e: 2.0)


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _reference(epochs: int = 3, n: int = 48, batch: int = 8) -> torch.Tensor:
    """Plain PyTorch: head only in epoch 0, then the backbone as a second group at 0.01, doubled each epoch."""
    data, model = RandomRegression(n), WithBackbone()
    opt = torch.optim.SGD(model.layer.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(epochs):
        if epoch == 1:
            opt.add_param_group({"params": list(model.backbone.parameters()), "lr": 0.01})
        elif epoch > 1:
            opt.param_groups[-1]["lr"] *= 2.0
        for start in range(0, n, batch):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(data.x[start:start + batch]), data.y[start:start + batch]).backward()
            opt.step()
    return _weights(model)


def test_backbone_unfreezes_at_its_epoch_with_its_own_rate(make_trainer):
    model = WithBackbone()
    frozen = model.backbone[0].weight.detach().clone()
    rates = []

    class Record(BaseFinetuning.__mro__[1]):  # a plain Callback
        def on_train_epoch_end(self, trainer, module):
            rates.append([g["lr"] for g in trainer.optimizer.param_groups])

    make_trainer(max_epochs=3, callbacks=[_callback(), Record()], **LEAN).fit(model, regression_loader(48, 8))
    assert rates == [[0.1], [0.1, 0.01], [0.1, 0.02]]
    assert not torch.equal(model.backbone[0].weight, frozen)
    torch.testing.assert_close(_weights(model), _reference(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stop_at", [9, 14])  # inside the unfreezing epoch, and inside the next
def test_added_groups_survive_a_checkpoint_and_resume_exactly(make_trainer, tmp_path, stop_at):
    full = WithBackbone()
    make_trainer(max_epochs=3, callbacks=[_callback()], **LEAN).fit(full, regression_loader(48, 8))
    first = make_trainer(max_steps=stop_at, callbacks=[_callback()], **LEAN)
    first.fit(WithBackbone(), regression_loader(48, 8))
    first.save_checkpoint(str(tmp_path / "mid.ckpt"))
    resumed = WithBackbone(seed=3)
    trainer = make_trainer(max_epochs=3, callbacks=[_callback()], **LEAN)
    trainer.fit(resumed, regression_loader(48, 8), ckpt_path=str(tmp_path / "mid.ckpt"))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.1, 0.02]
    assert torch.equal(_weights(resumed), _weights(full))


def test_a_module_without_a_backbone_and_deepspeed_are_refused(make_trainer):
    with pytest.raises(AttributeError, match="BackboneFinetuning: BoringModel has no `backbone` attribute"):
        make_trainer(max_epochs=1, callbacks=[_callback()], **LEAN).fit(BoringModel(), regression_loader(16, 8))
    with pytest.raises(ValueError, match=r"expected an epoch, an int >= 0"):
        BackboneFinetuning(unfreeze_backbone_at_epoch=-1)
    pytest.importorskip("deepspeed")
    trainer = make_trainer(max_epochs=1, strategy="deepspeed", callbacks=[_callback()])
    with pytest.raises(ValueError, match="BackboneFinetuning with DeepSpeedStrategy: DeepSpeed's engine builds"):
        _callback().setup(trainer, WithBackbone(), "fit")


def test_helpers_freeze_and_filter():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    BaseFinetuning.freeze(net, train_bn=True)
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]
    BaseFinetuning.freeze(net, train_bn=False)
    assert not any(p.requires_grad for p in net.parameters()) and not net[1].track_running_stats
    opt = torch.optim.SGD([net[0].weight], lr=1.0)
    BaseFinetuning.unfreeze_and_add_param_group(net, opt, initial_denom_lr=4.0)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.25 and len(opt.param_groups[1]["params"]) == 3


def _ddp_worker():
    model = WithBackbone()
    Trainer(max_epochs=3, accelerator="cpu", strategy="ddp", use_distributed_sampler=False,
            logger=False, enable_progress_bar=False,
            callbacks=[_callback()], **LEAN).fit(model, rank_shard_loader(96, 4))
    return _weights(model).tolist()


@pytest.mark.slow
def test_two_processes_give_the_one_process_update():
    """The backbone is unfrozen after DDP wrapped the module (outside its reducer): its gradients are still
    averaged, so 2 x batch 4 equals 1 x batch 8."""
    ranks = run_distributed(_ddp_worker)
    assert ranks[0] == ranks[1]
    torch.testing.assert_close(torch.tensor(ranks[0]), _reference(n=96), rtol=1e-5, atol=1e-6)
