"""Accelerate's ``accelerate.logging`` path: ``get_logger`` and the verbosity helpers
(trainer/accelerate/get_logger.py)."""

from trainer.accelerate.get_logger import *  # noqa: F401,F403
from trainer.accelerate.get_logger import __all__  # noqa: F401
