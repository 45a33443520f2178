"""``trainer.core.datamodule.DataModule`` (Lightning: ``lightning.pytorch.core.datamodule.LightningDataModule``)."""

from trainer.data.datamodule import DataModule

__all__ = ["DataModule"]
