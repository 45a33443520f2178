"""Train a ``TrainModule`` with the ``Trainer``, or keep your own loop with the ``Accelerator``."""

from trainer.accelerate.accelerator import Accelerator
from trainer.data.datamodule import DataModule
from trainer.module import TrainModule
from trainer.accelerate.plugins import (DataLoaderConfiguration, DeepSpeedPlugin, FullyShardedDataParallelPlugin,
                             GradientAccumulationPlugin, ProjectConfiguration)
from trainer.data.seeding import seed_everything
from trainer.trainer import Trainer
# Accelerate's top-level names (importable as from accelerate; kept out of __all__, see docs/migrating.md)
from trainer.accelerate.data_loader import skip_first_batches  # noqa: F401,E402
from trainer.accelerate.launchers import debug_launcher, notebook_launcher  # noqa: F401,E402
from trainer.accelerate.operations import DistributedType  # noqa: F401,E402
from trainer.state import PartialState  # noqa: F401,E402
from trainer.utils import (find_executable_batch_size, is_rich_available, load_checkpoint_in_model,  # noqa: F401,E402
                           synchronize_rng_states)

__version__ = "0.1.0"
__all__ = ["Accelerator", "DataLoaderConfiguration", "DataModule", "DeepSpeedPlugin", "FullyShardedDataParallelPlugin",
           "GradientAccumulationPlugin", "ProjectConfiguration", "TrainModule", "Trainer", "seed_everything",
           "__version__"]
