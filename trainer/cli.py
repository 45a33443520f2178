"""The ``trainer`` command. Subcommands (config, launch, test, env) register in ``COMMANDS``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _version(args: argparse.Namespace) -> int:
    from trainer import __version__

    print(f"trainer {__version__}")
    return 0


COMMANDS["version"] = ("print the installed version", lambda parser: None, _version)


def _register_commands() -> None:
    """Import the command modules (config, env, ...); each adds itself to ``COMMANDS``.

    Imported here rather than by ``import trainer`` so the library stays free of CLI code.
    """
    import trainer.commands  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    _register_commands()
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
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    return int(args.run(args) or 0)


if __name__ == "__main__":
    # Run through the importable module so commands register in the same COMMANDS as main uses.
    from trainer.cli import main as _main

    sys.exit(_main())
