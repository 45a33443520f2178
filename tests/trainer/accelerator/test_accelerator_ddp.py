"""The Accelerator door on a real 2-process gloo group: prepared loaders are dealt as Accelerate deals
them (whole batches of the single-process order in turn), so 2 processes at one seed update exactly
as 1 process with accumulation 2, and ``gather_for_metrics`` returns every sample exactly once, in the
single-process order, however uneven the tail."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Accelerator
from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.timeout(240)


def _data(n: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


def _train(accelerator: Accelerator, n: int, batch: int, k: int, shuffle: bool) -> list:
    x, y = _data(n)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # the loader's own generator decides the order (without one, a shuffle gets a generator seeded when
    # it is prepared on several processes, as under Accelerate, and 1 and 2 processes then differ)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(3))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for _ in range(2):  # two epochs: the sampler's epoch must advance
        for xb, yb in loader:
            with accelerator.accumulate(model):
                accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
                optimizer.step()
                optimizer.zero_grad()
    return [p.detach().flatten().tolist() for p in accelerator.unwrap_model(model).parameters()]


def _reference(n: int, batch: int, k: int, world: int, shuffle: bool) -> list:
    """One process, the same script and seed, accumulating ``world * k`` batches."""
    return _train(Accelerator(cpu=True, gradient_accumulation_steps=world * k), n, batch, world * k, shuffle)


def _train_worker(n, batch, k, shuffle):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=k)
    assert accelerator.num_processes == 2
    return _train(accelerator, n, batch, k, shuffle)


@pytest.mark.parametrize("k,shuffle", [(1, False), (2, True)])
def test_two_processes_update_like_one_process_with_the_whole_batch(k, shuffle):
    n, batch = 24, 3  # 2 ranks x 3 samples x k micro-batches per optimizer step
    ranks = run_distributed(_train_worker, n=n, batch=batch, k=k, shuffle=shuffle)
    assert ranks[0] == ranks[1]
    expected = _reference(n, batch, k, 2, shuffle)
    for got, want in zip(ranks[0], expected):
        assert got == pytest.approx(want, abs=1e-6)


CASES = [(1, 1), (5, 2), (11, 3), (12, 3), (7, 4), (16, 5), (9, 9)]


def _gather_worker():
    accelerator = Accelerator(cpu=True)
    world = accelerator.num_processes
    out = {}
    for n, batch in CASES:
        for shuffle in (False, True):
            loader = accelerator.prepare(DataLoader(TensorDataset(torch.arange(n)), batch_size=batch,
                                                    shuffle=shuffle, generator=torch.Generator().manual_seed(n)))
            passes = []
            for _ in range(2):
                seen, per_rank = [], []
                for (xb,) in loader:
                    seen += accelerator.gather_for_metrics(xb).tolist()
                    per_rank += xb.tolist()
                    # a per-process scalar and a tensor not shaped like the batch are gathered as they are
                    assert accelerator.gather_for_metrics(xb.sum()).shape == (world,)
                    assert accelerator.gather_for_metrics(torch.zeros(batch + 1)).shape == (world * (batch + 1),)
                passes.append((seen, per_rank))
            out[f"{n},{batch},{shuffle}"] = passes
    # outside a prepared loader's loop it is a plain gather
    out["plain"] = accelerator.gather_for_metrics(torch.tensor([accelerator.process_index] * 2)).tolist()
    return out


def test_gather_for_metrics_returns_every_sample_once_in_the_single_process_order():
    ranks = run_distributed(_gather_worker)
    alone = _gather_worker()  # one process, same script and seed
    assert ranks[0]["plain"] == [0, 0, 1, 1]
    for n, batch in CASES:
        for shuffle in (False, True):
            passes = ranks[0][f"{n},{batch},{shuffle}"]
            for epoch, ((seen, _), (seen1, _)) in enumerate(zip(passes, ranks[1][f"{n},{batch},{shuffle}"])):
                assert seen == seen1
                assert sorted(seen) == list(range(n)), (n, batch, shuffle, epoch)  # every sample once
                assert seen == alone[f"{n},{batch},{shuffle}"][epoch][0], (n, batch, shuffle, epoch)
                if not shuffle:
                    assert seen == list(range(n))
            # each rank got whole batches; the last step is completed with the pass's first samples
            local = passes[0][1] + ranks[1][f"{n},{batch},{shuffle}"][0][1]
            assert len(local) == -(-n // (2 * batch)) * 2 * batch and set(local) == set(range(n))
            if shuffle and n > 2:
                assert passes[0][0] != passes[1][0], "the order did not change between passes"


def _skip_worker():
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(TensorDataset(torch.arange(11)), batch_size=2))
    skipped = accelerator.skip_first_batches(loader, 1)
    return [v for (xb,) in skipped for v in accelerator.gather_for_metrics(xb).tolist()]


def test_gather_for_metrics_after_skip_first_batches_continues_the_order():
    ranks = run_distributed(_skip_worker)
    assert ranks[0] == ranks[1] == list(range(4, 11))


def _one_job_after_another() -> list[float]:
    """Three Accelerators one after the other in one job, each ended with end_training (which destroys
    the process group), rank 0 the later one to start each next group."""
    import time

    weights = []
    for generation in range(3):
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(torch.nn.Linear(2, 1, bias=False))
        with torch.no_grad():
            accelerator.unwrap_model(model).weight.fill_(float(generation))
        accelerator.backward(model(torch.ones(1, 2)).sum())  # a collective on the new group
        weights.append(accelerator.reduce(accelerator.unwrap_model(model).weight.grad.sum(), "sum").item())
        accelerator.end_training()
        if accelerator.process_index == 0:
            time.sleep(0.5)  # rank 1 reaches the next group's rendezvous first
    return weights


@pytest.mark.timeout(120)
def test_a_new_accelerator_after_end_training_forms_a_fresh_group():
    """The old group's keys stayed in rank 0's store under the same names: rank 1 read rank 0's dead
    gloo address and hung (or failed with Connection refused) in the second init_process_group."""
    ranks = run_distributed(_one_job_after_another, timeout=90)
    assert ranks[0] == ranks[1] == [4.0, 4.0, 4.0]  # 2 ranks x d(sum(x))/dw summed over the 2 weights
