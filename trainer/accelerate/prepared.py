"""``accelerator.prepared``: the registry of what an ``Accelerator`` prepared, in the order prepared.

``save_state`` writes these (trainer/persistence/accelerator_state.py) and ``load_state`` gives each
its state back by position, so a restarted script that prepares the same objects in the same order
resumes where it stopped. Accelerate keeps the same lists under private names (``_models``,
``_optimizers``, ...); the Accelerator keeps those names as aliases of these lists for user code that
reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.accelerate.wrappers import AcceleratedOptimizer, AcceleratedScheduler, PreparedDataLoader


@dataclass
class PreparedObjects:
    """The prepared models, optimizers, schedulers and dataloaders, and the objects given to
    ``register_for_checkpointing`` (``custom_objects``), each list in the order they came in.

    Example:
        >>> model, opt = accelerator.prepare(model, opt)  # doctest: +SKIP
        >>> accelerator.prepared.models[0] is model  # doctest: +SKIP
        True
    """

    models: list[torch.nn.Module] = field(default_factory=list)
    optimizers: list[AcceleratedOptimizer] = field(default_factory=list)
    schedulers: list[AcceleratedScheduler] = field(default_factory=list)
    dataloaders: list[PreparedDataLoader] = field(default_factory=list)
    custom_objects: list[Any] = field(default_factory=list)

    def forget(self) -> None:
        """Drop every prepared object (``free_memory``); registered custom objects stay, as in Accelerate."""
        self.models.clear()
        self.optimizers.clear()
        self.schedulers.clear()
        self.dataloaders.clear()
