"""The errors of reading a checkpoint, shared by the writer/reader (checkpoint_io.py) and the
verifier (checkpoint_verify.py) without either importing the other at import time."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why and what to do."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or damaged (e.g. a copy interrupted by a crash)."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need to unpickle code (a callable or class) to load."""
