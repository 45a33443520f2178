"""Helpers under their Accelerate names, for hand-written loops."""

from trainer.seed import seed_everything


def set_seed(seed: int, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (Accelerate's name for ``seed_everything``)."""
    from trainer.seed import set_deterministic

    used = seed_everything(seed)
    set_deterministic(deterministic)
    return used


__all__ = ["seed_everything", "set_seed"]
