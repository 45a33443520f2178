"""Accelerate's ``examples/by_feature`` scripts give the same metrics, epoch by epoch, under Accelerate
and under this library with the literal import rule (``accelerate`` -> ``trainer``), on 1 and on 2
processes at the same seed. Data and model are the local stand-ins of ``hf_stubs/`` (a synthetic
sentence-pair task; nothing is downloaded); the metric includes a checksum of the order the
predictions were gathered in.

The scripts are not part of the accelerate package: set ``ACCELERATE_EXAMPLES_DIR`` to a checkout of
Accelerate's repository (its ``examples`` folder, or its git directory) to run these tests; without
it they are skipped. Measured 2026-12-07 against Accelerate's main branch with accelerate 1.16.0
installed: 8 of 8 scripts equal on 1 and on 2 processes.
"""

from __future__ import annotations

import pytest

from tests.helpers.distributed import run_distributed
from tests.trainer.accelerator.accelerate_examples_runner import EXAMPLES, examples_source, run_example

pytest.importorskip("accelerate")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _run(name: str, library: str, tmp: str) -> list[str]:
    return run_example(examples_source(name), name, EXAMPLES[name], library, tmp)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_by_feature_example_gives_accelerates_metrics(name, world, tmp_path):
    if examples_source(name) is None:
        pytest.skip("set ACCELERATE_EXAMPLES_DIR to a checkout of Accelerate's repository to run its examples")
    theirs = run_distributed(_run, world_size=world, timeout=300, name=name, library="accelerate",
                             tmp=str(tmp_path / "accelerate"))
    ours = run_distributed(_run, world_size=world, timeout=300, name=name, library="trainer",
                           tmp=str(tmp_path / "trainer"))
    assert len(theirs[0]) == 3, theirs[0]  # three epochs reported
    assert ours[0] == theirs[0]
