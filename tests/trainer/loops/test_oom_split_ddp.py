"""oom_split under 2-process DDP (real gloo): a rank that splits its micro-batch (the other does not,
or splits differently) stays in step, and the update equals one process on the union batch."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from trainer import Trainer
from tests.helpers.distributed import run_distributed, trainer_order
from tests.trainer.loops.test_oom_split import Net, _Nested

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _fit(model, batch, k, one_process=False, **kw):
    trainer = Trainer(max_epochs=2, accumulate_grad_batches=k, accelerator="cpu", logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, **kw)
    data = _Nested(22)
    # one process reads the permutation the Trainer deals (shuffled) over two
    trainer.fit(model, DataLoader(data, batch_size=batch, sampler=trainer_order(data) if one_process else None))
    return [p.detach().tolist() for p in model.parameters()], trainer


def _worker(limits, where, k):
    import os

    limit = limits[int(os.environ["RANK"])]
    model = Net(limit, where)
    weights, trainer = _fit(model, batch=5, k=k, oom_split=True)
    assert trainer.world_size == 2
    return {"weights": weights, "steps": trainer.global_step, "max_size": max(model.sizes)}


@pytest.mark.parametrize("limits, where, k", [((None, 2), "forward", 2), ((3, 1), "backward", 1)])
def test_ranks_that_split_differently_match_one_process(limits, where, k):
    ranks = run_distributed(_worker, limits=limits, where=where, k=k)
    want, single = _fit(Net(), batch=10, k=k, one_process=True)
    assert ranks[0]["steps"] == ranks[1]["steps"] == single.global_step
    for rank in ranks:
        for got, ref in zip(rank["weights"], want):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), atol=1e-6, rtol=1e-5)


def _hopeless_worker():
    import os

    import datetime
    from trainer.strategies import DDPStrategy

    limit = 0 if os.environ["RANK"] == "1" else None  # rank 1 cannot fit even one sample
    trainer = Trainer(max_epochs=1, strategy=DDPStrategy(timeout=datetime.timedelta(seconds=10)), logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, oom_split=True)
    trainer.fit(Net(limit), DataLoader(_Nested(8), batch_size=2))


def test_a_rank_that_cannot_recover_ends_the_job_without_a_hang():
    with pytest.raises(AssertionError) as info:
        run_distributed(_hopeless_worker, timeout=60)
    assert "rank 1" in str(info.value) and "one sample does not fit in memory" in str(info.value)
