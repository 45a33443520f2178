"""``MisconfigurationException``: Lightning's name for a setting that cannot work.

Defined here, in the room both sides may import (callbacks/ and strategies/ never import the
Trainer's side); ``trainer.utils.exceptions`` re-exports it under Lightning's path.
"""

from __future__ import annotations


class MisconfigurationException(ValueError):
    """A Trainer, callback or strategy argument that cannot work as given (the message names the
    value received, what was expected and how to fix it).

    A ``ValueError``, so ``except ValueError`` keeps catching it; Lightning code that catches
    ``MisconfigurationException`` (from ``trainer.utils.exceptions``) catches the same errors.
    """
