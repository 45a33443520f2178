"""Accelerate's ``accelerate.accelerator`` path: the ``Accelerator`` and the names its module holds
(trainer/accelerate/accelerator.py)."""

from trainer.accelerate.accelerator import *  # noqa: F401,F403
from trainer.accelerate.accelerator import Accelerator  # noqa: F401
