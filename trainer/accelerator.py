"""Accelerate's ``accelerate.accelerator`` path: the ``Accelerator`` (trainer/accelerate/accelerator.py)."""

from trainer.accelerate.accelerator import Accelerator

__all__ = ["Accelerator"]
