"""Accelerate's ``accelerate.data_loader`` path: sharding, seeding and skipping for hand-written loops
(trainer/accelerate/data_loader.py)."""

from trainer.accelerate.data_loader import *  # noqa: F401,F403
from trainer.accelerate.data_loader import __all__  # noqa: F401
