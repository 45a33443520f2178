"""seed_everything: the same seed gives the same training; DataLoader workers get distinct,
reproducible seeds; deterministic=True turns on torch's deterministic algorithms during fit."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

from trainer import TrainModule, seed_everything
from trainer.data.seeding import seed_worker
from trainer.utils import set_seed
from tests.helpers.trainers import quiet_trainer



# -- seed_everything itself ------------------------------------------------------------------------------

def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(()).item()


def test_seed_everything_seeds_python_numpy_and_torch():
    assert seed_everything(123) == 123
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    assert all(a != b for a, b in zip(_draws(), first))
    assert os.environ["TRAINER_GLOBAL_SEED"] == "124"


def test_seed_everything_without_a_seed_reads_the_environment_or_warns():
    os.environ["TRAINER_GLOBAL_SEED"] = "77"
    assert seed_everything() == 77
    del os.environ["TRAINER_GLOBAL_SEED"]
    with pytest.warns(UserWarning, match=r"seed_everything\(None\): no seed given; using 0\."):
        assert seed_everything() == 0


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "1", True])
def test_seed_everything_refuses_bad_seeds(seed):
    with pytest.raises(ValueError, match=rf"seed_everything\({seed!r}\): expected an int in \[0, 2\*\*32\)\."):
        seed_everything(seed)


def test_set_seed_is_seed_everything_with_optional_determinism():
    assert set_seed(5, deterministic=True) == 5
    first = _draws()
    assert torch.are_deterministic_algorithms_enabled()
    set_seed(5)
    assert _draws() == first


# -- the same seed trains the same -----------------------------------------------------------------------

class Noisy(TrainModule):
    """Initialised from the global RNG, with dropout: every source of randomness matters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _train(seed: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    seed_everything(seed)
    x, y = torch.randn(40, 4), torch.randn(40, 1)
    model = Noisy()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    quiet_trainer(max_epochs=3).fit(model, loader)
    return model.state_dict(), model.losses


def test_same_seed_gives_identical_training():
    state_a, losses_a = _train(11)
    torch.manual_seed(999)  # whatever ran in between does not matter
    random.seed(999)
    state_b, losses_b = _train(11)
    assert losses_a == losses_b and len(losses_a) == 15
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    state_c, losses_c = _train(12)
    assert losses_c != losses_a
    assert not torch.equal(state_a["net.0.weight"], state_c["net.0.weight"])


# -- DataLoader workers ------------------------------------------------------------------------------------

class RandomPerItem(Dataset):
    """Each item is (worker id, random.random(), numpy.random.rand()) drawn inside the worker."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        info = get_worker_info()
        return torch.tensor([float(info.id if info else -1), random.random(), float(np.random.rand())],
                            dtype=torch.float64)


class Collects(TrainModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.rows: list[tuple[int, list[list[float]]]] = []  # (epoch, batch)

    def training_step(self, batch, batch_idx):
        self.rows.append((self.current_epoch, batch.tolist()))
        return self.layer(torch.ones(1, 1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _worker_draws(seed: int, workers: bool = True) -> tuple[list, DataLoader]:
    seed_everything(seed, workers=workers)
    loader = DataLoader(RandomPerItem(), batch_size=2, num_workers=2)
    model = Collects()
    quiet_trainer(max_epochs=2).fit(model, loader)
    return model.rows, loader


def _by_worker(rows, epoch: int, column: int) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for e, batch in rows:
        if e == epoch:
            for item in batch:
                out.setdefault(int(item[0]), []).append(item[column])
    return out


@pytest.mark.timeout(60)
def test_workers_get_distinct_reproducible_seeds():
    rows, loader = _worker_draws(7)
    assert loader.worker_init_fn is seed_worker
    assert len(rows) == 8  # 4 batches per epoch, 2 epochs
    for column in (1, 2):  # python random, numpy
        epoch0, epoch1 = _by_worker(rows, 0, column), _by_worker(rows, 1, column)
        assert sorted(epoch0) == [0, 1] and all(len(v) == 4 for v in epoch0.values())
        assert epoch0[0] != epoch0[1], "two workers drew the same numbers"
        assert epoch0 != epoch1, "an epoch repeated the previous epoch's numbers"
    again, _ = _worker_draws(7)
    assert again == rows
    other, _ = _worker_draws(8)
    assert _by_worker(other, 0, 1) != _by_worker(rows, 0, 1)
    assert _by_worker(other, 0, 2) != _by_worker(rows, 0, 2)


@pytest.mark.timeout(60)
def test_workers_false_leaves_the_loader_alone():
    _, loader = _worker_draws(7, workers=False)
    assert loader.worker_init_fn is None


def test_a_users_worker_init_fn_is_kept(make_trainer):
    def mine(worker_id: int) -> None:
        pass

    seed_everything(3)
    loader = DataLoader(RandomPerItem(), batch_size=2, num_workers=2, worker_init_fn=mine)
    make_trainer(max_epochs=1).fit(Collects(), loader)
    assert loader.worker_init_fn is mine


# -- deterministic algorithms --------------------------------------------------------------------------------

class SeesDeterminism(Collects):
    def training_step(self, batch, batch_idx):
        self.flags = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled())
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("deterministic, flags", [(True, (True, False)), ("warn", (True, True)),
                                                  (False, (False, False))])
def test_deterministic_turns_on_torch_deterministic_algorithms_during_fit(deterministic, flags, make_trainer):
    assert not torch.are_deterministic_algorithms_enabled()
    model = SeesDeterminism()
    make_trainer(max_epochs=1, deterministic=deterministic).fit(model, DataLoader(RandomPerItem(), batch_size=4))
    assert model.flags == flags
