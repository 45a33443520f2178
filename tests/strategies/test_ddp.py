"""DDP on real gloo process groups (2 processes on 127.0.0.1): n processes with b samples each
update like one process with n*b, with accumulation and item counts; metrics agree across
ranks; validation counts every sample once; only rank zero writes."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
from trainer.strategies.checkpoint_io import safe_load
from trainer.strategies import DDPStrategy
from trainer import Trainer, TrainModule
from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.timeout(240)


class Model(TrainModule):
    def __init__(self, use_num_items: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 2)
        self.use_num_items = use_num_items

    def training_step(self, batch, batch_idx):
        x, y, mask = batch
        err = ((self.layer(x) - y) ** 2).sum(dim=1)
        if self.use_num_items:
            return {"loss": (err * mask).sum(), "num_items": mask.sum()}
        return err.mean()

    def validation_step(self, batch, batch_idx):
        x, y, mask = batch
        self.log("val/loss", ((self.layer(x) - y) ** 2).sum(dim=1).mean(), sync_dist=True)
        self.log("val/count", float(len(x)), reduce_fx="sum", sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)
    mask = (torch.rand(n, generator=g) < 0.6).float()
    return x, y, mask


def _fit(batch: int, k: int, use_num_items: bool, epochs: int = 2, **kw) -> tuple[list, Trainer]:
    x, y, mask = _data()
    model = Model(use_num_items)
    trainer = Trainer(max_epochs=epochs, accumulate_grad_batches=k, accelerator="cpu", logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0, **kw)
    val = DataLoader(TensorDataset(x[:7], y[:7], mask[:7]), batch_size=2)
    data = TensorDataset(x, y, mask)
    # on several processes the Trainer shuffles the training data (DistributedSampler(shuffle=True), seed 0,
    # set_epoch each epoch, as Lightning); one process reads the same permutation, so that each of its steps
    # takes the samples the processes' step takes together
    sampler = None if int(os.environ.get("WORLD_SIZE", "1")) > 1 else \
        torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    trainer.fit(model, DataLoader(data, batch_size=batch, sampler=sampler), val)
    return [p.detach().tolist() for p in model.parameters()], trainer


def _ddp_worker(batch, k, use_num_items):
    weights, trainer = _fit(batch, k, use_num_items)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    return {"weights": weights, "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}, "steps": trainer.global_step}


@pytest.mark.parametrize("k, use_num_items", [(1, False), (2, False), (3, True), (1, True)])
def test_two_processes_with_b_each_equal_one_process_with_2b(k, use_num_items):
    ranks = run_distributed(_ddp_worker, batch=2, k=k, use_num_items=use_num_items)
    single, trainer = _fit(batch=4, k=k, use_num_items=use_num_items)
    assert ranks[0]["steps"] == ranks[1]["steps"] == trainer.global_step
    for rank in ranks:
        for got, want in zip(rank["weights"], single):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-6, rtol=1e-5)
    # validation: 7 samples split 4 + 3 (no padding), reduced with sync_dist: equal to one process
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    assert ranks[0]["metrics"]["val/count"] == 7.0
    assert ranks[0]["metrics"]["val/loss"] == pytest.approx(float(trainer.callback_metrics["val/loss"]), rel=1e-6)


def _stop_worker(tmp, async_save=False):
    class Unsynced(Model):
        def validation_step(self, batch, batch_idx):
            # differs per rank and not synced: rank zero's value is what every rank sees
            self.log("val/rank_value", float(self.trainer.global_rank) + self.current_epoch)

    x, y, mask = _data()
    ckpt = ModelCheckpoint(dirpath=tmp, monitor="val/rank_value", mode="min", save_top_k=1, save_last=True,
                           async_save=async_save)
    stop = EarlyStopping("val/rank_value", mode="min", patience=1)
    trainer = Trainer(max_epochs=10, accelerator="cpu", logger=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, callbacks=[ckpt, stop])
    loader = DataLoader(TensorDataset(x, y, mask), batch_size=4)
    trainer.fit(Unsynced(), loader, DataLoader(TensorDataset(x, y, mask), batch_size=4))
    return {"epoch": trainer.current_epoch, "metric": float(trainer.callback_metrics["val/rank_value"]),
            "best": os.path.basename(ckpt.best_model_path)}


@pytest.mark.parametrize("async_save", [False, True])
def test_callbacks_decide_alike_on_every_rank_and_only_rank_zero_writes(tmp_path, async_save):
    ranks = run_distributed(_stop_worker, tmp=str(tmp_path), async_save=async_save)
    assert ranks[0] == ranks[1]
    assert ranks[0]["epoch"] == 2  # rank zero's value rises each epoch: patience 1 stops after epoch 1
    assert sorted(os.listdir(tmp_path)) == sorted([ranks[0]["best"], "last.ckpt"])
    last = safe_load(str(tmp_path / "last.ckpt"))
    assert last["loops"]["current_epoch"] == 1 and last["metadata"]["world_size"] == 2  # epoch 1, after validation


def _sampler_worker():
    x = torch.arange(10).float().unsqueeze(1)
    seen = []

    class Record(TrainModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen.append((self.current_epoch, batch[0].flatten().tolist()))
            return (self.w * batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_checkpointing=False).fit(Record(), DataLoader(TensorDataset(x), batch_size=2, shuffle=True))
    return seen


def test_distributed_sampler_splits_shuffles_per_epoch_and_keeps_every_sample():
    ranks = run_distributed(_sampler_worker)
    for epoch in (0, 1):
        got = sorted(v for rank in ranks for e, batch in rank if e == epoch for v in batch)
        assert got == list(range(10))  # each sample once per epoch, split between the ranks
    order = [[v for e, b in ranks[0] if e == epoch for v in b] for epoch in (0, 1)]
    assert order[0] != order[1]  # set_epoch reshuffles


def _no_sync_worker(k):
    counts = {"no_sync": 0}

    class Counting(DDPStrategy):
        def no_backward_sync(self, module):
            counts["no_sync"] += 1
            return super().no_backward_sync(module)

    _, trainer = _fit(batch=2, k=k, use_num_items=False, epochs=1, strategy=Counting())
    return counts["no_sync"], trainer.global_step


def test_no_all_reduce_on_non_final_micro_steps():
    ranks = run_distributed(_no_sync_worker, k=3)
    # 24 samples: 6 micro-batches of 2 per rank, windows of 3: 2 steps, 4 micro-steps skip the all-reduce
    assert [tuple(r) for r in ranks] == [(4, 2), (4, 2)]


class _SigtermOnRank1(Callback):
    """SIGTERM reaches only rank 1 (as when a scheduler signals processes one by one)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == self.at_step and not trainer.fit_loop.preempted:
            os.kill(os.getpid(), signal.SIGTERM)


def _preempt_worker(tmp, at_steps):
    from trainer.loops.preemption import StopAgreement

    StopAgreement.every_s = 0.0  # agree at every step: the stop comes at most one step after the signal

    def fit(ckpt_dir, callbacks=(), ckpt_path=None):
        x, y, mask = _data(n=40)
        model = Model()
        trainer = Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                          num_sanity_val_steps=0, callbacks=[ModelCheckpoint(dirpath=ckpt_dir), *callbacks])
        loader = DataLoader(TensorDataset(x, y, mask), batch_size=3, shuffle=True)
        try:
            trainer.fit(model, loader, ckpt_path=ckpt_path)
        except SystemExit as stop:
            return {"exit": stop.code, "step": trainer.global_step}
        return {"weights": [p.detach().tolist() for p in model.parameters()], "step": trainer.global_step}

    runs = {"straight": fit(f"{tmp}/straight")}
    for at_step in at_steps:
        interrupted = fit(f"{tmp}/{at_step}", [_SigtermOnRank1(at_step)])
        runs[at_step] = {"interrupted": interrupted, "resumed": fit(f"{tmp}/{at_step}", ckpt_path="last")}
    return runs


@settings(max_examples=2, deadline=None)
@given(at_steps=st.lists(st.integers(1, 19), min_size=1, max_size=2, unique=True))  # 3 epochs of 7 steps a rank
@example(at_steps=[7, 14, 6])  # the last step of an epoch settles a pending stop at once (every rank stops
# at 7, at 14); the step before it: the stop lands on the epoch's last step
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_and_resume_is_exact(tmp_path_factory, at_steps):
    """The guarantee: every rank stops at one step, no later than one step after the signal reached
    rank 1, leaves fit with status 0, and the resume ends bit-exact. (It asserted the step after the
    signal, which fails when the signal comes at an epoch's last step: the stop then lands at once.)"""
    tmp = tmp_path_factory.mktemp("preempt")
    ranks = run_distributed(_preempt_worker, tmp=str(tmp), at_steps=at_steps)
    for at_step in at_steps:
        stopped = {rank[at_step]["interrupted"]["step"] for rank in ranks}
        assert len(stopped) == 1, (at_step, ranks)  # the same step on every rank
        assert at_step <= stopped.pop() <= at_step + 1, (at_step, ranks)
        for rank in ranks:
            assert rank[at_step]["interrupted"]["exit"] == 0  # left fit cleanly
            assert rank[at_step]["resumed"]["step"] == rank["straight"]["step"] == 21
            assert rank[at_step]["resumed"]["weights"] == rank["straight"]["weights"], at_step  # bit-exact
    assert ranks[0]["straight"]["weights"] == ranks[1]["straight"]["weights"]


def _interval_worker(cases):
    from trainer.loops.preemption import StopAgreement

    x, y, mask = _data(n=400)  # 200 samples per rank in batches of 3: 67 steps, one epoch
    out = []
    for at_step, every_n_steps, every_s in cases:
        StopAgreement.every_n_steps, StopAgreement.every_s = every_n_steps, every_s
        trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, callbacks=[_SigtermOnRank1(at_step)])
        try:
            trainer.fit(Model(), DataLoader(TensorDataset(x, y, mask), batch_size=3))
        except SystemExit as stop:
            out.append({"exit": stop.code, "step": trainer.global_step,
                        "reductions": trainer.fit_loop.stop_agreement.reductions})
        else:
            out.append({"exit": None, "step": trainer.global_step})
    return out


def test_the_stop_agreement_is_not_a_collective_per_step_and_still_stops_every_rank_together():
    # Reductions start at steps 1, 2, 3, 3+n, 3+2n, ... and each is read when the next starts; the
    # epoch's last step (67) settles whatever is pending. The signal reaches rank 1 after step `at`.
    cases = [(12, 5, 0.5),    # carried by the reduction of step 13, read at 18: 5 reductions, not 18
             (64, 5, 0.5),    # carried by that of step 68 -- past the epoch: the settle at 67 stops it
             (1, 5, 0.5),     # the first steps agree at every step: started at 1, read at 2
             (30, None, 1e6)]  # every_s far above the steps' time: the interval is capped, the settle stops
    ranks = run_distributed(_interval_worker, cases=cases)
    expected = [{"exit": 0, "step": 18, "reductions": 5}, {"exit": 0, "step": 67, "reductions": 16},
                {"exit": 0, "step": 2, "reductions": 1}, {"exit": 0, "step": 67, "reductions": 4}]
    assert ranks[0] == ranks[1] == expected


def _epoch_end_worker(tmp):
    x, y, mask = _data()
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, callbacks=[ModelCheckpoint(dirpath=tmp, save_last=True)])
    loader = DataLoader(TensorDataset(x, y, mask), batch_size=4)
    trainer.fit(Model(), loader, DataLoader(TensorDataset(x, y, mask), batch_size=4))
    return trainer.global_step


def test_an_epoch_end_checkpoint_of_two_ranks_resumes_on_one(tmp_path):
    # ModelCheckpoint's own epoch-end save (after validation) records batch_idx = that epoch's length
    # on 2 ranks (3 batches); on 1 rank the epoch is 6 batches long, yet nothing of it is left to train
    saved_steps = run_distributed(_epoch_end_worker, tmp=str(tmp_path))[0]
    last = safe_load(str(tmp_path / "last.ckpt"))
    assert saved_steps == 3 and last["loops"]["batch_idx"] == 3 and last["metadata"]["world_size"] == 2
    x, y, mask = _data()
    trainer = Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(Model(), DataLoader(TensorDataset(x, y, mask), batch_size=4), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.current_epoch == 2 and trainer.global_step == 3 + 6  # epoch 1 whole, epoch 0 not repeated
