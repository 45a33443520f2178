"""``trainer.core.datamodule.DataModule`` (Lightning: ``lightning.pytorch.core.datamodule.LightningDataModule``)."""

from trainer.datamodule import DataModule

__all__ = ["DataModule"]
