"""The ``trainer`` command line: config, launch, test, env, merge-weights, version.

The library never imports this package; the package imports the library. Each command module
offers ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; ``COMMANDS`` below lists
them explicitly (no module registers itself).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from trainer.cli import config, env, launch, merge_weights, test


def _version(args: argparse.Namespace) -> int:
    from trainer import __version__

    print(f"trainer {__version__}")
    return 0


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "config": (config.HELP, config.add_arguments, config.run),
    "launch": (launch.HELP, launch.add_arguments, launch.run),
    "test": (test.HELP, test.add_arguments, test.run),
    "env": (env.HELP, env.add_arguments, env.run),
    "merge-weights": (merge_weights.HELP, merge_weights.add_arguments, merge_weights.run),
    "version": ("print the installed version", lambda parser: None, _version),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="Train PyTorch models from a laptop to many GPUs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args) or 0)
