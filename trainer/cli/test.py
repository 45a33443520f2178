"""``trainer test``: launch the built-in end-to-end check (``trainer.cli.selftest``) under the current config,
through the same torchrun path as ``trainer launch``; one line per check, a verdict, and the exit code."""

from __future__ import annotations

import argparse
import sys

from trainer.cli import launch

HELP = "run a built-in end-to-end check of the current config and print a verdict"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    launch.add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = launch.resolve(args, command="trainer test")
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"trainer test: {err}", file=sys.stderr)
        return 2
    machines = f" on machine {cfg.machine_rank} of {cfg.num_machines}" if cfg.num_machines > 1 else ""
    print(f"trainer test: {cfg.num_processes} process(es){machines}, device {cfg.device}, "
          f"mixed precision {cfg.mixed_precision}, strategy {cfg.strategy}", flush=True)
    status = launch.start(cfg, "trainer.cli.selftest", [], command="trainer test", module=True, debug=args.debug,
                          explicit=getattr(args, "explicit_fields", None))
    if status:
        print("trainer test: FAILED (see the lines above; fix the setting named there, or run "
              "`trainer env` for a bug report)", file=sys.stderr)
    return status
