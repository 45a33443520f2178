import os
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


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
