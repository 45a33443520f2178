"""``trainer.core``: the module classes under the path Lightning code imports them from
(``lightning.pytorch.core`` -> ``trainer.core``; ``core.module`` and ``core.datamodule`` too)."""

from trainer.data.datamodule import DataModule
from trainer.module import TrainModule

__all__ = ["DataModule", "TrainModule"]
