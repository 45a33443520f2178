"""``trainer merge-weights CKPT OUT``: any checkpoint (one file, or a sharded directory) to plain
safetensors weights, offline, in one process, without a GPU and without a process group."""

from __future__ import annotations

import argparse
import sys

from trainer.persistence.weights import full_weights  # noqa: F401 -- the command's work, importable from here

HELP = "turn any checkpoint (sharded or not) into plain safetensors weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .ckpt file, or a sharded checkpoint directory (FSDP, DeepSpeed)")
    parser.add_argument("output", help="directory for model.safetensors (split above --max-shard-size)")
    parser.add_argument("--max-shard-size", default="10GB", help="largest safetensors file (default 10GB)")


def run(args: argparse.Namespace) -> int:
    from trainer.strategies.checkpoint_io import CheckpointError
    from trainer.strategies.safetensors_weights import save_weights

    try:
        weights = full_weights(args.checkpoint)
    except (CheckpointError, FileNotFoundError, OSError) as err:
        print(f"trainer merge-weights: {err}", file=sys.stderr)
        return 2
    names = save_weights({k: v.contiguous() for k, v in weights.items()}, args.output, args.max_shard_size)
    total = sum(v.numel() for v in weights.values())
    print(f"trainer merge-weights: {len(weights)} tensors, {total:,} values -> {args.output} ({', '.join(names)})")
    return 0
