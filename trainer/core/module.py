"""``trainer.core.module.TrainModule`` (Lightning: ``lightning.pytorch.core.module.LightningModule``)."""

from trainer.module import TrainModule

__all__ = ["TrainModule"]
