"""Accelerate's own test scripts (as installed with the accelerate package), loaded with only their
import lines rewritten to this library, and their functions called one by one.

The rewrite is the migration guide's literal rule: ``accelerate`` -> ``trainer`` in ``import`` and
``from ... import`` lines, module paths kept (``accelerate.state`` -> ``trainer.state``,
``accelerate.data_loader`` -> ``trainer.data_loader``, ``accelerate.utils.dataclasses`` ->
``trainer.utils.dataclasses``, ...). Only ``accelerate.test_utils`` is left alone: the scripts'
fixtures (RegressionDataset, RegressionModel -- test data, not the library); its
``are_the_same_tensors`` reads Accelerate's singleton, so it is replaced by an equivalent on ours.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import traceback
import types
from typing import Any

_IMPORT = re.compile(r"^(\s*)(from|import)\s+accelerate((?:\.\w+)*)", re.M)


def rewrite_imports(source: str) -> str:
    """``source`` with its ``accelerate`` imports pointed at ``trainer`` (see the module doc)."""

    def one(match: re.Match) -> str:
        indent, keyword, path = match.groups()
        if path.startswith(".test_utils"):
            return match.group(0)
        return f"{indent}{keyword} trainer{path}"

    return _IMPORT.sub(one, source)


def load_script(name: str) -> types.ModuleType:
    """``accelerate/test_utils/scripts/<name>.py`` with its imports rewritten, as a fresh module."""
    spec = importlib.util.find_spec(f"accelerate.test_utils.scripts.{name}")
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        source = rewrite_imports(f.read())
    # a real file on sys.path, so DataLoader workers (and pickles) can import the script's classes
    folder = os.path.join(tempfile.gettempdir(), f"trainer_rewritten_scripts_{os.getpid()}")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        atexit.register(shutil.rmtree, folder, True)  # DataLoader workers (forked) exit without running it
    with open(os.path.join(folder, f"rewritten_{name}.py"), "w", encoding="utf-8") as f:
        f.write(source)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules.pop(f"rewritten_{name}", None)
    importlib.invalidate_caches()
    module = importlib.import_module(f"rewritten_{name}")
    if hasattr(module, "are_the_same_tensors"):  # the fixture reads Accelerate's own singleton state
        module.are_the_same_tensors = are_the_same_tensors
    return module


def are_the_same_tensors(tensor: Any) -> bool:
    """The fixture ``accelerate.test_utils.are_the_same_tensors`` (every process holds the same
    values), written on this library's ``gather``: Accelerate's reads its process-wide state, which
    only an ``accelerate.Accelerator`` creates."""
    import torch

    from trainer.utils import gather

    tensor = tensor[None].clone()
    gathered = gather(tensor)
    return all(torch.equal(gathered[i], tensor[0]) for i in range(gathered.shape[0]))


# Accelerate's test_script.py: the functions main() calls on CPU (test_split_between_processes_dataset
# needs the `datasets` package; the fp16/bf16 checks run inside training_check).
TEST_SCRIPT = ["init_state_check", "process_execution_check", "test_split_between_processes_list",
               "test_split_between_processes_tuple", "test_split_between_processes_nested_dict",
               "test_split_between_processes_tensor", "test_split_between_processes_evenly", "rng_sync_check",
               "dl_preparation_check", "central_dl_preparation_check", "custom_sampler_check",
               "check_seedable_sampler", "check_seedable_sampler_with_data_seed",
               "check_seedable_sampler_in_batch_sampler_shard", "training_check(use_seedable_sampler=False)",
               "training_check(use_seedable_sampler=True)", "test_trigger", "test_reinstantiated_state"]
TWO_PROCESSES_ONLY = {"check_seedable_sampler_in_batch_sampler_shard"}
# test_distributed_data_loop.py asserts two processes (create_accelerator, the expected batches)
# and its stateful-dataloader checks (use_stateful_dataloader=True, torchdata), on one process: on two their
# iterable dataset is dispatched from process 0, which is refused with the flag (docs/migrating.md)
DATA_LOOP_ONE_PROCESS = ["test_data_loader(shuffle=False)", "test_data_loader(shuffle=True)",
                         "test_data_loader(batch_sampler)", "test_data_loader(sampler=BatchSampler)",
                         "test_stateful_dataloader", "test_stateful_dataloader_save_state"]

# Accelerate's test_distributed_data_loop.py: main()'s calls (the stateful-dataloader ones: one process only).
DATA_LOOP = ["test_skip_first_batches_preserves_metric_samples", "test_default_ensures_even_batch_sizes",
             "test_can_disable_even_batches", "test_can_join_uneven_inputs", "test_join_can_override_even_batches",
             "test_join_can_override_for_mixed_type_dataloaders",
             "test_join_raises_warning_for_iterable_when_overriding_even_batches",
             "test_join_raises_warning_for_non_ddp_distributed", "test_pickle_accelerator",
             "test_data_loader(shuffle=False)", "test_data_loader(shuffle=True)",
             "test_data_loader(batch_sampler)", "test_data_loader(sampler=BatchSampler)"]


def _call_test_script(module: types.ModuleType, call: str) -> None:
    if call.startswith("training_check"):
        module.training_check(use_seedable_sampler="True" in call)
    else:
        getattr(module, call)()


def _call_data_loop(module: types.ModuleType, call: str, accelerator: Any) -> None:
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, default_collate

    if call == "test_join_raises_warning_for_non_ddp_distributed":  # as main() calls it
        original = accelerator.state.distributed_type
        accelerator.state.distributed_type = module.DistributedType.FSDP
        try:
            module.test_join_raises_warning_for_non_ddp_distributed(accelerator)
        finally:
            accelerator.state.distributed_type = original
    elif call.startswith("test_data_loader"):
        dataset = module.DummyDataset()
        size, workers = module.BATCH_SIZE, module.NUM_WORKERS
        if "shuffle" in call:
            loader = DataLoader(dataset, shuffle="True" in call, batch_size=size, num_workers=workers)
        elif "sampler=BatchSampler" in call:
            loader = DataLoader(dataset, sampler=BatchSampler(RandomSampler(dataset), batch_size=size, drop_last=False),
                                batch_size=None, collate_fn=default_collate, num_workers=workers)
        else:
            loader = DataLoader(dataset, batch_sampler=BatchSampler(RandomSampler(dataset), batch_size=size,
                                                                    drop_last=False), num_workers=workers)
        module.test_data_loader(loader, accelerator)
    elif call in ("test_skip_first_batches_preserves_metric_samples", "test_stateful_dataloader",
                  "test_stateful_dataloader_save_state"):
        getattr(module, call)(accelerator)
    else:
        getattr(module, call)()


def run_calls(script: str, calls: list[str], workdir: str | None = None) -> dict[str, str]:
    """Each call of ``script`` -> "ok" or the last lines of its traceback (run in this process, in
    order, as the script's main() runs them: one Accelerator made first and kept alive).

    ``workdir``: the working directory during the calls, the same for every process of the job
    (process_execution_check has them append to one file there); None: a temporary one, removed
    after (one process)."""
    import multiprocessing

    import torch

    # DataLoader workers (num_workers=4 in the data-loop script) start as under torchrun, by fork: a
    # process of the tests' fork server would otherwise start them through a fresh fork server each
    multiprocessing.set_start_method("fork", force=True)
    module = load_script(script)
    results: dict[str, str] = {}
    cwd = os.getcwd()
    shared = tempfile.mkdtemp(prefix="trainer_script_cwd_") if workdir is None else workdir
    if True:
        os.chdir(shared)
        try:
            main_accelerator = module.Accelerator()
            if script == "test_distributed_data_loop":
                torch.manual_seed(main_accelerator.process_index)
            for call in calls:
                try:
                    if script == "test_script":
                        _call_test_script(module, call)
                    else:
                        _call_data_loop(module, call, main_accelerator)
                    results[call] = "ok"
                except BaseException as err:  # noqa: BLE001 - every failure is a result to report
                    lines = traceback.format_exception(err)
                    results[call] = "".join(lines[-3:])[-600:]
        finally:
            os.chdir(cwd)
            # the module is imported and its loaders' workers are gone: nothing reads these any more
            # (a multiprocessing child never runs atexit handlers)
            shutil.rmtree(os.path.join(tempfile.gettempdir(), f"trainer_rewritten_scripts_{os.getpid()}"), True)
            if workdir is None:
                shutil.rmtree(shared, True)
    return results
