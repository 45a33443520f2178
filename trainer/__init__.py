"""Train a ``TrainModule`` with the ``Trainer``, or keep your own loop with the ``Accelerator``."""

from trainer.accelerator import Accelerator
from trainer.datamodule import DataModule
from trainer.module import TrainModule
from trainer.plugins import (DataLoaderConfiguration, DeepSpeedPlugin, FullyShardedDataParallelPlugin,
                             GradientAccumulationPlugin, ProjectConfiguration)
from trainer.seed import seed_everything
from trainer.trainer import Trainer

__version__ = "0.1.0"
__all__ = ["Accelerator", "DataLoaderConfiguration", "DataModule", "DeepSpeedPlugin", "FullyShardedDataParallelPlugin",
           "GradientAccumulationPlugin", "ProjectConfiguration", "TrainModule", "Trainer", "seed_everything",
           "__version__"]
