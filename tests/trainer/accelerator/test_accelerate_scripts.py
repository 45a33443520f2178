"""Accelerate's own test scripts (``accelerate/test_utils/scripts/test_sync.py`` and ``test_ops.py``, as
installed with the accelerate package) run against ``trainer.Accelerator``: their imports are pointed
at ours (``Accelerator``, ``DataLoaderConfiguration``, ``GradientAccumulationPlugin``,
``GradientState``, ``DistributedType``, ``set_seed``, the operations) and their test functions are
called on 1 and on 2 real gloo processes.

What is not run, or run adapted, is exactly what docs/migrating.md lists as a deliberate difference:

- ``dispatch_batches=True`` variants: refused by name (each process loads its own share).
- ``test_gradient_accumulation*`` run on a 64-sample ``RegressionDataset`` instead of 80, so every
  accumulation window is full: on a short last window our update is the exact mean over the
  window's samples where Accelerate divides by ``gradient_accumulation_steps``.
- ``test_op_checker``: Accelerate's debug-mode shape checks (``DistributedOperationException``).
- ``test_copy_tensor_to_devices``: GPU/XLA only (returns at once on CPU in Accelerate too).
"""

from __future__ import annotations

import importlib

import pytest

from tests.helpers.distributed import run_distributed

accelerate = pytest.importorskip("accelerate")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SKIPPED_OPS = {"test_op_checker": "debug-mode operation checks (DistributedOperationException) are not implemented",
               "test_copy_tensor_to_devices": "GPU/XLA only"}


def _pointed_at_ours(name: str):
    """Accelerate's script module with the names it imports from accelerate replaced by ours."""
    import trainer
    import trainer.utils
    from trainer.gradient_state import GradientState

    module = importlib.import_module(f"accelerate.test_utils.scripts.{name}")
    ours = {"Accelerator": trainer.Accelerator, "DataLoaderConfiguration": trainer.DataLoaderConfiguration,
            "GradientAccumulationPlugin": trainer.GradientAccumulationPlugin, "GradientState": GradientState,
            "DistributedType": trainer.utils.DistributedType, "set_seed": trainer.utils.set_seed,
            "gather": trainer.utils.gather, "gather_object": trainer.utils.gather_object,
            "broadcast": trainer.utils.broadcast, "pad_across_processes": trainer.utils.pad_across_processes,
            "reduce": trainer.utils.reduce}
    for key, value in ours.items():
        if key in vars(module):
            setattr(module, key, value)
    return module


def _full_windows(module) -> None:
    """The documented adaptation: 64 samples (full accumulation windows) where the script builds 80."""
    base = module.RegressionDataset

    class FullWindows(base):
        def __init__(self, *args, length=64, **kwargs):
            super().__init__(*args, length=64 if length == 80 else length, **kwargs)

    module.RegressionDataset = FullWindows


def _run_sync_tests() -> list[str]:
    import trainer

    sync = _pointed_at_ours("test_sync")
    _full_windows(sync)
    accelerator = trainer.Accelerator()
    ran = []
    sync.test_dataloader_break()
    ran.append("test_dataloader_break")
    if accelerator.num_processes == 1:
        sync.test_noop_sync(accelerator)
        ran.append("test_noop_sync")
    else:
        sync.test_distributed_sync(accelerator)
        sync.test_distributed_sync_multiple_fwd(accelerator)
        ran += ["test_distributed_sync", "test_distributed_sync_multiple_fwd"]
        for split_batches in (False, True):
            for sync_each_batch in (False, True):
                sync.test_gradient_accumulation(split_batches, False, sync_each_batch)
                sync.test_gradient_accumulation_with_opt_and_scheduler(split_batches, False, sync_each_batch)
        ran += ["test_gradient_accumulation", "test_gradient_accumulation_with_opt_and_scheduler"]
    if accelerator.num_processes == 1:
        sync.test_gradient_accumulation_with_opt_and_scheduler()
        ran.append("test_gradient_accumulation_with_opt_and_scheduler")
    return ran


def _run_ops_tests() -> list[str]:
    import trainer

    ops = _pointed_at_ours("test_ops")
    state = trainer.Accelerator()  # the scripts' `state`: process_index, num_processes, device, ...
    ran = []
    for name in sorted(vars(ops)):
        if name.startswith("test_") and callable(getattr(ops, name)) and name not in SKIPPED_OPS:
            getattr(ops, name)(state)
            ran.append(name)
    return ran


def _both() -> list[list[str]]:
    return [_run_sync_tests(), _run_ops_tests()]


def test_accelerate_scripts_on_one_process():
    sync_ran, ops_ran = _both()
    assert sync_ran == ["test_dataloader_break", "test_noop_sync", "test_gradient_accumulation_with_opt_and_scheduler"]
    assert set(ops_ran) == {"test_gather", "test_gather_object", "test_gather_non_contiguous", "test_broadcast",
                            "test_pad_across_processes", "test_reduce_sum", "test_reduce_mean", "test_reduce_max"}


def test_accelerate_scripts_on_two_processes():
    results = run_distributed(_both, world_size=2, timeout=240)
    for sync_ran, ops_ran in results:
        assert "test_gradient_accumulation_with_opt_and_scheduler" in sync_ran
        assert "test_distributed_sync_multiple_fwd" in sync_ran and "test_reduce_sum" in ops_ran
