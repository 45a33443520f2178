"""``trainer merge-weights CKPT OUT``: any checkpoint (one file, or a sharded directory) to plain
safetensors weights, offline, in one process, without a GPU and without a process group."""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "turn any checkpoint (sharded or not) into plain safetensors weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .ckpt file, or a sharded checkpoint directory (FSDP, DeepSpeed)")
    parser.add_argument("output", help="directory for model.safetensors (split above --max-shard-size)")
    parser.add_argument("--max-shard-size", default="10GB", help="largest safetensors file (default 10GB)")


def full_weights(path: str) -> dict[str, Any]:
    """The unsharded weights of the checkpoint at ``path``."""
    from trainer.strategies.checkpoint_io import CheckpointError, safe_load
    from trainer.strategies.checkpoint_verify import verify_sharded

    import os

    from trainer.persistence.kinds import describe

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


def run(args: argparse.Namespace) -> int:
    from trainer.strategies.checkpoint_io import CheckpointError, save_weights

    try:
        weights = full_weights(args.checkpoint)
    except (CheckpointError, FileNotFoundError, OSError) as err:
        print(f"trainer merge-weights: {err}", file=sys.stderr)
        return 2
    names = save_weights({k: v.contiguous() for k, v in weights.items()}, args.output, args.max_shard_size)
    total = sum(v.numel() for v in weights.values())
    print(f"trainer merge-weights: {len(weights)} tensors, {total:,} values -> {args.output} ({', '.join(names)})")
    return 0
