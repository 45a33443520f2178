"""Accelerate's ``accelerate.local_sgd`` path: ``LocalSGD`` (trainer/accelerate/local_sgd.py)."""

from trainer.accelerate.local_sgd import LocalSGD

__all__ = ["LocalSGD"]
