"""Lightning's ``lightning.pytorch.utilities.exceptions`` under this package's name."""

from trainer.strategies.exceptions import MisconfigurationException

__all__ = ["MisconfigurationException"]
