"""DDP's own tuning knobs are reachable from DDPStrategy: bucket_cap_mb, gradient_as_bucket_view and
static_graph reach torch's DistributedDataParallel on 2 real gloo processes, and training with them
ends where the defaults do; bad values are refused by name."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.distributed import run_distributed
from trainer.strategies import DDPStrategy


def _train(options: dict) -> dict:
    from tests.strategies.test_ddp import _fit

    strategy = DDPStrategy(**options)
    weights, trainer = _fit(batch=2, k=1, use_num_items=False, strategy=strategy)
    ddp = trainer.model  # the DistributedDataParallel the strategy made
    return {"weights": weights, "bucket_bytes_cap": ddp.bucket_bytes_cap,
            "gradient_as_bucket_view": ddp.gradient_as_bucket_view, "static_graph": ddp.static_graph}


@pytest.mark.slow
def test_ddp_options_reach_torch_and_train_like_the_defaults():
    tuned = run_distributed(_train, options={"bucket_cap_mb": 1, "gradient_as_bucket_view": True,
                                             "static_graph": True})
    default = run_distributed(_train, options={})
    for rank in tuned:
        assert rank["bucket_bytes_cap"] == 1024 * 1024 and rank["gradient_as_bucket_view"] and rank["static_graph"]
    assert default[0]["bucket_bytes_cap"] == 25 * 1024 * 1024 and not default[0]["gradient_as_bucket_view"]
    for got, want in zip(tuned[0]["weights"], default[0]["weights"]):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-6, rtol=1e-5)


def test_bad_ddp_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"bucket_cap_mb=0\): expected a size in MiB > 0"):
        DDPStrategy(bucket_cap_mb=0)
    with pytest.raises(ValueError, match=r"bucket_cap_mb='25'\)"):
        DDPStrategy(bucket_cap_mb="25")
    with pytest.raises(TypeError, match=r"gradient_as_bucket_view='yes'\): expected True or False"):
        DDPStrategy(gradient_as_bucket_view="yes")
    with pytest.raises(TypeError, match=r"static_graph=1\): expected True or False"):
        DDPStrategy(static_graph=1)
