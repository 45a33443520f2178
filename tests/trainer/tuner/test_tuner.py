"""The tuner: Tuner.lr_find / LearningRateFinder (a range test returning rates, smoothed losses, a suggestion and a
PNG where the logs go, leaving the model, optimizer and RNG as they were) and Tuner.scale_batch_size /
BatchSizeFinder (power and binary search against injected out-of-memory errors), on 1 and 2 processes."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

from trainer import Trainer
from trainer.callbacks import BatchSizeFinder, CSVLogger, LearningRateFinder
from trainer.callbacks.lr_finder import LRFinderResult
from trainer.tuner import Tuner
from tests.helpers import BoringModel, RandomRegression, regression_loader
from tests.helpers.distributed import run_distributed
from tests.helpers.trainers import LEAN


class Sized(BoringModel):
    """Builds its own shuffled loader of ``batch_size``; a batch larger than ``fits`` (on ``oom_rank``, or every
    rank) raises an out-of-memory error, as a GPU would."""

    def __init__(self, batch_size: int = 2, fits: int = 10**9, oom_rank: int | None = None, lr: float = 0.05):
        super().__init__(lr=lr)
        self.batch_size, self.fits, self.oom_rank = batch_size, fits, oom_rank
        self.seen_sizes: list[int] = []

    def train_dataloader(self):
        return DataLoader(RandomRegression(64), batch_size=self.batch_size, shuffle=True)

    def training_step(self, batch, batch_idx):
        size = len(batch[0])
        self.seen_sizes.append(size)
        if size > self.fits and self.oom_rank in (None, self.global_rank):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return super().training_step(batch, batch_idx)


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- learning rate --------------------------------------------------------------------------------------------

def test_lr_find_returns_the_curve_a_suggestion_and_a_png_and_leaves_the_run_as_it_was(tmp_path):
    model = BoringModel(lr=0.05)
    before = _weights(model).clone()
    trainer = Trainer(max_epochs=2, accelerator="cpu", enable_progress_bar=False, logger=CSVLogger(str(tmp_path)),
                      **LEAN)
    result = Tuner(trainer).lr_find(model, regression_loader(64, 8, shuffle=True), num_training=40, update_attr=False,
                                    max_lr=5.0)
    lrs, losses = result.results["lr"], result.results["loss"]
    assert len(lrs) == len(losses) and 3 < len(lrs) <= 40 and lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-8)
    assert min(losses) < losses[0]  # the loss came down somewhere in the range
    suggestion = result.suggestion()
    assert suggestion in lrs and 1e-8 < suggestion < 5.0
    assert result.png_path == os.path.join(trainer.log_dir, "lr_find.png") and os.path.getsize(result.png_path) > 1000
    assert torch.equal(_weights(model), before) and model.lr == 0.05 and trainer.global_step == 0
    # the real fit after it is the fit without it: weights, optimizer and the shuffle's RNG were put back
    trainer.fit(model, regression_loader(64, 8, shuffle=True))
    torch.manual_seed(0)
    plain = BoringModel(lr=0.05)
    Trainer(max_epochs=2, accelerator="cpu", enable_progress_bar=False, logger=False, **LEAN).fit(
        plain, regression_loader(64, 8, shuffle=True))
    assert torch.equal(_weights(model), _weights(plain))


def test_the_curve_is_a_plain_pytorch_range_test(make_trainer):
    """Rates min_lr * (max_lr / min_lr) ** (i / (n - 1)) (or linear), one SGD step each on the next batch (the
    loader again from its start when it ends), the loss smoothed as Lightning's (beta 0.98, bias-corrected)."""
    for mode in ("exponential", "linear"):
        result = Tuner(make_trainer(max_epochs=1, **LEAN)).lr_find(
            BoringModel(lr=0.05), regression_loader(32, 8), min_lr=1e-3, max_lr=0.5, num_training=10, mode=mode,
            early_stop_threshold=None, update_attr=False)
        model, data = BoringModel(lr=0.05), RandomRegression(32)
        opt, average, lrs, losses = torch.optim.SGD(model.parameters(), lr=0.05), 0.0, [], []
        for i in range(10):
            t = i / 9
            lr = 1e-3 * (0.5 / 1e-3) ** t if mode == "exponential" else 1e-3 + (0.5 - 1e-3) * t
            opt.param_groups[0]["lr"] = lr
            start = (i % 4) * 8
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(data.x[start:start + 8]), data.y[start:start + 8])
            loss.backward()
            opt.step()
            average = 0.98 * average + 0.02 * loss.item()
            lrs.append(lr)
            losses.append(average / (1 - 0.98 ** (i + 1)))
        assert result.results["lr"] == pytest.approx(lrs, rel=1e-12)
        assert result.results["loss"] == pytest.approx(losses, rel=1e-6)


def test_lr_find_stops_early_once_the_loss_diverges_and_updates_the_attribute(make_trainer):
    model = BoringModel(lr=0.05)
    result = Tuner(make_trainer(max_epochs=1, **LEAN)).lr_find(model, regression_loader(64, 8), min_lr=1e-4,
                                                               max_lr=1e3, num_training=60)
    assert len(result.results["lr"]) < 60  # 4 x the best smoothed loss reached before the end
    assert model.lr == result.suggestion()


def test_suggestion_is_the_steepest_descent():
    result = LRFinderResult("exponential", 1e-3, 1.0, 8)
    result.results = {"lr": [1, 2, 3, 4, 5, 6, 7, 8], "loss": [9.0, 8.0, 7.5, 4.0, 3.5, 3.4, 3.3, 3.9]}
    assert result.suggestion(skip_begin=1, skip_end=1) == 3  # np.gradient is steepest around lr 3-4
    assert result.suggestion(skip_begin=7, skip_end=1) is None


def test_learning_rate_finder_in_fit_trains_as_if_the_suggestion_were_set_from_the_start(make_trainer):
    model, finder = BoringModel(lr=0.05), LearningRateFinder(num_training_steps=30, max_lr=2.0)
    make_trainer(max_epochs=2, callbacks=[finder], **LEAN).fit(model, regression_loader(64, 8, shuffle=True))
    lr = finder.optimal_lr.suggestion()
    assert model.lr == lr != 0.05
    torch.manual_seed(0)
    plain = BoringModel(lr=lr)
    make_trainer(max_epochs=2, **LEAN).fit(plain, regression_loader(64, 8, shuffle=True))
    assert torch.equal(_weights(model), _weights(plain))


def test_lr_finder_refuses_a_module_without_a_rate_and_bad_arguments(make_trainer):
    class NoRate(BoringModel):
        def __init__(self):
            super().__init__()
            del self.lr

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(AttributeError, match=r"NoRate has no attribute 'lr' or 'learning_rate'"):
        Tuner(make_trainer(max_epochs=1, **LEAN)).lr_find(NoRate(), regression_loader(16, 8))
    with pytest.raises(ValueError, match=r"LearningRateFinder\(mode='cubic'\): expected one of"):
        LearningRateFinder(mode="cubic")
    with pytest.raises(ValueError, match=r"Tuner.lr_find\(method='validate'\): only method='fit'"):
        Tuner(make_trainer(max_epochs=1)).lr_find(BoringModel(), method="validate")


# -- batch size -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, fits, found, tried", [
    ("power", 20, 16, [2, 4, 8, 16, 32]),
    ("binsearch", 24, 24, [2, 4, 8, 16, 32, 24, 28, 26, 25]),
    ("power", 10**9, 64, [2, 4, 8, 16, 32, 64]),  # never past the dataset's 64 samples
])
def test_scale_batch_size_finds_the_largest_batch_that_fits(make_trainer, mode, fits, found, tried):
    model = Sized(fits=fits)
    before = _weights(model).clone()
    trainer = make_trainer(max_epochs=1, **LEAN)
    assert Tuner(trainer).scale_batch_size(model, mode=mode, steps_per_trial=2) == found
    assert model.batch_size == found and sorted(set(model.seen_sizes)) == sorted(set(tried))
    assert torch.equal(_weights(model), before) and trainer.global_step == 0


def test_batch_size_finder_in_fit_trains_with_the_found_size(make_trainer):
    model, finder = Sized(fits=8), BatchSizeFinder(init_val=4)
    trainer = make_trainer(max_epochs=1, callbacks=[finder], **LEAN)
    trainer.fit(model)
    assert finder.optimal_batch_size == 8 and finder.trials == [(4, True), (8, True), (16, False)]
    assert trainer.train_dataloader.batch_size == 8 and trainer.global_step == 64 // 8


def test_batch_size_search_refusals(make_trainer):
    trainer = make_trainer(max_epochs=1, **LEAN)
    with pytest.raises(ValueError, match=r"a dataloader passed in cannot be rebuilt with another batch size"):
        Tuner(trainer).scale_batch_size(BoringModel(), regression_loader(16, 8))
    with pytest.raises(AttributeError, match=r"BatchSizeFinder: no attribute 'batch_size' on BoringModel"):
        make_trainer(max_epochs=1, callbacks=[BatchSizeFinder()], **LEAN).fit(BoringModel(), regression_loader(16, 8))
    with pytest.raises(RuntimeError, match=r"even batch size 2 ran out of memory"):
        Tuner(trainer).scale_batch_size(Sized(fits=1))
    with pytest.raises(ValueError, match=r"BatchSizeFinder\(mode='linear'\): expected one of"):
        BatchSizeFinder(mode="linear")


def _ddp_worker(tmp):
    lr_model = BoringModel(lr=0.05)
    trainer = Trainer(max_epochs=1, accelerator="cpu", strategy="ddp", enable_progress_bar=False,
                      logger=CSVLogger(tmp), **LEAN)
    result = Tuner(trainer).lr_find(lr_model, regression_loader(64, 4), num_training=20, max_lr=2.0)
    sized = Sized(fits=8, oom_rank=1)  # only rank 1 runs out of memory above 8
    size = Tuner(Trainer(max_epochs=1, accelerator="cpu", strategy="ddp", enable_progress_bar=False, logger=False,
                         **LEAN)).scale_batch_size(sized, mode="binsearch")
    return result.results, lr_model.lr, size, os.path.exists(os.path.join(trainer.log_dir, "lr_find.png"))


@pytest.mark.slow
def test_two_processes_agree_on_the_curve_and_the_size(tmp_path):
    ranks = run_distributed(_ddp_worker, tmp=str(tmp_path))
    assert ranks[0][:3] == ranks[1][:3] and ranks[0][2] == 8 and ranks[0][3]
