"""The full, unsharded weights of any checkpoint of either door, in one process (``trainer
merge-weights`` and anything else that needs them): a one-file checkpoint's ``state_dict``, or a
sharded directory's shards merged by the reader of its format (``sharded_format``)."""

from __future__ import annotations

import os
from typing import Any


def full_weights(path: str) -> dict[str, Any]:
    """The unsharded weights of the checkpoint at ``path``."""
    from trainer.persistence.kinds import describe
    from trainer.strategies.checkpoint_io import CheckpointError, safe_load
    from trainer.strategies.checkpoint_verify import verify_sharded

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r}: no such file or directory. Pass a .ckpt file or a sharded checkpoint "
                                "directory.")
    meta = safe_load(path)
    if not isinstance(meta, dict) or "format_version" not in meta or not ("state_dict" in meta or "sharded" in meta):
        found, fix = describe(meta, path)
        raise CheckpointError(f"{path!r} is not a Trainer checkpoint: it holds {found}; expected a checkpoint written "
                              f"by Trainer.save_checkpoint or ModelCheckpoint. {fix}")
    sharded = meta.get("sharded")
    if sharded is None:
        return meta["state_dict"]
    verify_sharded(path, meta)  # no file may unpickle code; sizes and checksums as written
    merge = _MERGERS.get(sharded)
    if merge is not None:
        return merge(path)
    raise CheckpointError(f"{path!r} is a sharded checkpoint of an unknown kind ({sharded!r}); this version reads "
                          "'fsdp-dcp' and 'deepspeed'. Upgrade the trainer package.")


def _merge_dcp(path: str) -> dict[str, Any]:
    from trainer.strategies.checkpoint_verify import safe_dcp_load

    merged: dict[str, Any] = {}
    safe_dcp_load(merged, path, whole=True)  # every rank's shards, in this one process
    return merged["model"]


def _merge_deepspeed(path: str) -> dict[str, Any]:
    from trainer.strategies.deepspeed import deepspeed_merged_weights

    return deepspeed_merged_weights(path)  # the engine's zero_to_fp32, in this one process


# each sharded format (a strategy's ``sharded_format``) and how one process rebuilds its full weights
_MERGERS = {"fsdp-dcp": _merge_dcp, "deepspeed": _merge_deepspeed}
