"""Accelerate's own test scripts (``accelerate/test_utils/scripts/``, as installed with the accelerate
package) run against this library on 1 and on 2 real gloo processes.

``test_script.py`` and ``test_distributed_data_loop.py`` are loaded with only their import lines
rewritten (``accelerate`` -> ``trainer``, see ``accelerate_script_runner.py``) and every function
their ``main()`` calls on CPU is run; the one that fails on purpose is ``DELIBERATE`` below (and
docs/migrating.md). ``test_sync.py`` and ``test_ops.py`` have their imported names pointed at ours.

What is not run, or run adapted, is exactly what docs/migrating.md lists as a deliberate difference:

- ``test_reinstantiated_state``: expects ``AcceleratorState._reset_state()`` to break a live
  Accelerator; here each Accelerator owns its state, so it keeps working.
- ``test_sync.py``'s accumulation tests run with every ``split_batches`` / ``dispatch_batches`` /
  ``sync_each_batch`` combination, as its ``main()`` does.
- the stateful-dataloader checks of ``test_distributed_data_loop.py`` run on one process only: on two,
  their ``IterableDataset`` (without the sharded-stream protocol) is dispatched from process 0, and
  ``use_stateful_dataloader=True`` refuses that (docs/migrating.md); ``test_split_between_processes_dataset``
  is not run (needs the ``datasets`` package).
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
from tests.trainer.accelerator.accelerate_script_runner import (DATA_LOOP, DATA_LOOP_ONE_PROCESS, TEST_SCRIPT,
                                                                 TWO_PROCESSES_ONLY, run_calls)

accelerate = pytest.importorskip("accelerate")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SKIPPED_OPS = {"test_op_checker": "debug-mode operation checks (DistributedOperationException) are not implemented",
               "test_copy_tensor_to_devices": "GPU/XLA only"}


def _pointed_at_ours(name: str):
    """Accelerate's script module with the names it imports from accelerate replaced by ours."""
    import trainer
    import trainer.utils
    from trainer.engine.gradient_state import GradientState

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
            for dispatch_batches in (False, True):
                for sync_each_batch in (False, True):
                    sync.test_gradient_accumulation(split_batches, dispatch_batches, sync_each_batch)
                    sync.test_gradient_accumulation_with_opt_and_scheduler(split_batches, dispatch_batches,
                                                                           sync_each_batch)
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


DELIBERATE = {"test_reinstantiated_state": "no process-wide state: AcceleratorState._reset_state() has nothing to "
                                           "clear and a live Accelerator keeps working (Accelerate's raises)"}


def _scripts(one_process: bool, workdir: str) -> dict[str, str]:
    script_calls = [c for c in TEST_SCRIPT if not (one_process and c in TWO_PROCESSES_ONLY)]
    results = {f"test_script:{k}": v for k, v in run_calls("test_script", script_calls, workdir).items()}
    loop_calls = DATA_LOOP_ONE_PROCESS if one_process else DATA_LOOP
    results.update({f"test_distributed_data_loop:{k}": v
                    for k, v in run_calls("test_distributed_data_loop", loop_calls, workdir).items()})
    return results


def _check(results: dict[str, str]) -> None:
    failed = {k: v for k, v in results.items() if v != "ok" and k.split(":", 1)[1] not in DELIBERATE}
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())
    for name in DELIBERATE:  # a deliberate difference that starts passing must leave the list
        assert results[f"test_script:{name}"] != "ok", f"{name} passes now: remove it from DELIBERATE and the docs"


def test_accelerates_test_script_and_data_loop_with_imports_rewritten_on_one_process(tmp_path):
    (results,) = run_distributed(_scripts, world_size=1, timeout=240, one_process=True, workdir=str(tmp_path))
    assert len(results) == len(TEST_SCRIPT) - len(TWO_PROCESSES_ONLY) + len(DATA_LOOP_ONE_PROCESS)
    _check(results)


def test_accelerates_test_script_and_data_loop_with_imports_rewritten_on_two_processes(tmp_path):
    ranks = run_distributed(_scripts, world_size=2, timeout=280, one_process=False, workdir=str(tmp_path))
    assert len(ranks[0]) == len(TEST_SCRIPT) + len(DATA_LOOP)
    for results in ranks:
        _check(results)
