"""The full, unsharded weights of any checkpoint of either door, in one process (``trainer
merge-weights`` and anything else that needs them): a one-file checkpoint's ``state_dict``, or a
sharded directory's shards merged by the format recorded in its header (found through the one
registry of ``trainer.strategies.checkpoint_format``)."""

from __future__ import annotations

import os
from typing import Any


def full_weights(path: str) -> dict[str, Any]:
    """The unsharded weights of the checkpoint at ``path``."""
    from trainer.persistence.kinds import describe
    from trainer.strategies.checkpoint_format import recorded_format
    from trainer.strategies.checkpoint_io import CheckpointError, safe_load

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r}: no such file or directory. Pass a .ckpt file or a sharded checkpoint "
                                "directory.")
    meta = safe_load(path)
    if not isinstance(meta, dict) or "format_version" not in meta or not ("state_dict" in meta or "sharded" in meta):
        found, fix = describe(meta, path)
        raise CheckpointError(f"{path!r} is not a Trainer checkpoint: it holds {found}; expected a checkpoint written "
                              f"by Trainer.save_checkpoint or ModelCheckpoint. {fix}")
    written_by = recorded_format(meta, path)  # an unknown name is refused, naming the ones this version reads
    written_by.verify(path, meta)  # no file may unpickle code; sizes and checksums as written
    return written_by.merge(path, meta)
