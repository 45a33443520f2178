import os
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


STALE_BUILD_LOCK_S = 20 * 60


def pytest_sessionstart(session):
    """Free DeepSpeed's JIT build from a dead run's lock. torch's extension builder takes
    ``<build root>/<op>/lock`` with O_EXCL and waits for it to vanish; a run killed while it compiled
    (e.g. a CI job cancelled on this machine) leaves the file behind, and from then on every DeepSpeed
    test here hangs until its timeout. A build takes ~1-2 minutes on 2 cores, so a lock older than
    20 minutes has no live owner. Only the controller does this (xdist workers start afterwards)."""
    if hasattr(session.config, "workerinput"):
        return
    import time

    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    for lock in root.glob("*/*/lock"):
        try:
            age = time.time() - lock.stat().st_mtime
            if age > STALE_BUILD_LOCK_S:
                lock.unlink()
                print(f"conftest: removed a stale JIT build lock ({lock}, {age / 60:.0f} min old)", file=sys.stderr)
        except OSError:
            pass


@pytest.fixture(scope="session")  # a stateless factory: usable in hypothesis tests too
def make_trainer():
    """Build a quiet Trainer: ``make_trainer(max_epochs=1, ...)`` is ``Trainer(logger=False,
    enable_progress_bar=False, accelerator="cpu", max_epochs=1, ...)``; any argument overrides."""
    from tests.helpers.trainers import quiet_trainer

    return quiet_trainer


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Restore the environment, seeds and torch's global switches; run in a temp directory."""
    saved_env = dict(os.environ)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    random.seed(0)
    yield
    os.environ.clear()
    os.environ.update(saved_env)
    torch.use_deterministic_algorithms(False)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# The slow tier: files whose tests start processes (torchrun, gloo groups, DeepSpeed, the CLI's
# launcher, pip). `make test-fast` (-m "not slow") leaves them out; `make test` runs everything.
# A test elsewhere that does the same carries @pytest.mark.slow itself.
SLOW_FILES = {
    "test_accelerator_ddp.py", "test_benchmark_smoke.py", "test_checkpoint_safety.py", "test_cli_selftest.py",
    "test_crash_safety.py",
    "test_ddp.py", "test_deepspeed.py", "test_demo.py", "test_fsdp.py", "test_launch.py",
    "test_packaging.py", "test_seed_pattern.py",
}


def pytest_collection_modifyitems(config, items):
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        # The GPU tier (`make test-gpu`): @pytest.mark.cuda, or cuda(devices=2) for several GPUs.
        needed = max((m.kwargs.get("devices", 1) for m in item.iter_markers("cuda")), default=0)
        if needed > gpus:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA device(s), this machine has {gpus}"))
    # Slow tests first (stable order otherwise): the long multi-process tests then overlap each other on
    # the two xdist workers and the run ends on short tests, instead of one worker finishing a long test
    # alone. With `--dist worksteal` (the Makefile) an idle worker takes tests queued for the busy one.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
