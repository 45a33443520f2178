"""Seeding python, numpy, torch and DataLoader workers."""

from __future__ import annotations

import os
import random
import warnings

import torch

_WORKERS_ENV = "TRAINER_SEED_WORKERS"


def seed_everything(seed: int | None = None, workers: bool = True) -> int:
    """Seed ``random``, ``numpy`` (if installed) and ``torch`` (CPU and every CUDA device).

    Args:
        seed: the seed; ``None`` reads ``$TRAINER_GLOBAL_SEED`` or picks 0 with a warning.
        workers: also seed ``random`` and ``numpy`` inside each DataLoader worker
            (distinctly per worker and per epoch) when the Trainer or Accelerator
            iterates a loader that has no ``worker_init_fn`` of its own.

    Returns:
        The seed used.
    """
    if seed is None:
        env = os.environ.get("TRAINER_GLOBAL_SEED")
        if env is None:
            warnings.warn("seed_everything(None): no seed given; using 0.", stacklevel=2)
        seed = int(env) if env is not None else 0
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ValueError(f"seed_everything({seed!r}): expected an int in [0, 2**32).")
    os.environ["TRAINER_GLOBAL_SEED"] = str(seed)
    os.environ[_WORKERS_ENV] = "1" if workers else "0"
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    return seed


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that derives ``random`` and ``numpy`` seeds from torch's per-worker seed
    (which torch already makes distinct per worker and per epoch)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed)


def install_worker_seeding(loader: object) -> None:
    """Give a DataLoader with workers our ``seed_worker`` when ``seed_everything(workers=True)``
    ran and the loader has no ``worker_init_fn`` of its own."""
    if os.environ.get(_WORKERS_ENV) != "1":
        return
    if getattr(loader, "num_workers", 0) > 0 and getattr(loader, "worker_init_fn", None) is None:
        loader.worker_init_fn = seed_worker  # type: ignore[attr-defined]


def set_deterministic(mode: bool | str) -> None:
    """``Trainer(deterministic=True)``: torch's deterministic algorithms (``"warn"`` only warns)."""
    if mode is False:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=mode == "warn")
    torch.backends.cudnn.benchmark = False
