"""``accelerate.utils.dataclasses``'s names that scripts import from there (the configuration objects
and the enums), so the literal import rule ``accelerate`` -> ``trainer`` works for that path too."""

from trainer.accelerate.operations import DistributedType
from trainer.accelerate.plugins import (DataLoaderConfiguration, DeepSpeedPlugin, FullyShardedDataParallelPlugin,
                             GradientAccumulationPlugin, ProjectConfiguration)
from trainer.accelerate.helpers import LoggerType, PrecisionType, RNGType

__all__ = ["DataLoaderConfiguration", "DeepSpeedPlugin", "DistributedType", "FullyShardedDataParallelPlugin",
           "GradientAccumulationPlugin", "LoggerType", "PrecisionType", "ProjectConfiguration", "RNGType"]
