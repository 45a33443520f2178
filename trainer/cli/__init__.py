"""The ``trainer`` command line: config, launch, test, env, merge-weights, version, and the config-driven
fit/validate/test/predict (trainer_cli.py, with ``TrainerCLI``).

The library never imports this package; the package imports the library. Each command module
offers ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; ``COMMANDS`` below lists
them explicitly (no module registers itself).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from trainer.cli import config, env, launch, merge_weights, test


def _version(args: argparse.Namespace) -> int:
    cli_logo()
    return 0


def cli_logo() -> None:
    """Print the package's name and version on one line: what a script's start-up banner is for (Lightning's
    examples call ``cli_lightning_logo()`` first, which prints Lightning's ASCII logo)."""
    from trainer import __version__

    print(f"trainer {__version__}")


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "config": (config.HELP, config.add_arguments, config.run),
    "launch": (launch.HELP, launch.add_arguments, launch.run),
    "test": (test.HELP, test.add_arguments, test.run),
    "env": (env.HELP, env.add_arguments, env.run),
    "merge-weights": (merge_weights.HELP, merge_weights.add_arguments, merge_weights.run),
    "version": ("print the installed version", lambda parser: None, _version),
}
for _stage in ("fit", "validate", "predict"):  # listed in --help; main() hands them to trainer_cli before parsing
    COMMANDS[_stage] = (f"{_stage} from a config file: trainer {_stage} --config run.yaml [--key value ...] "
                        "(`trainer test --config ...` likewise)", lambda parser: None, lambda args: 0)


def _wants_config(argv: list[str]) -> bool:
    from trainer.cli.trainer_cli import wants_config

    return wants_config(argv)


def __getattr__(name: str) -> object:
    """``from trainer.cli import TrainerCLI, SaveConfigCallback`` (Lightning's ``lightning.pytorch.cli``),
    imported on first use: the other commands do not load the library's training side."""
    if name in ("TrainerCLI", "SaveConfigCallback"):
        from trainer.cli import trainer_cli

        return getattr(trainer_cli, name)
    raise AttributeError(f"module 'trainer.cli' has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="Train PyTorch models from a laptop to many GPUs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}  # type: ignore[attr-defined]  # name -> its parser, for errors in that command's words
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
        parser.commands[name] = command  # type: ignore[attr-defined]
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, argv: list[str], command: str | None, unknown: list[str]) -> None:
    """An unknown command or option: the command's own usage and the closest spelling (argparse printed the
    top-level usage and no suggestion)."""
    import difflib

    if command is None:
        typed = next((a for a in argv if not a.startswith("-")), "")
        close = difflib.get_close_matches(typed, list(COMMANDS), n=1, cutoff=0.6)
        parser.error(f"unknown command {typed!r}." + (f" Did you mean {close[0]!r}?" if close else "")
                     + f" Commands: {', '.join(COMMANDS)}.")
    target = parser.commands[command]  # type: ignore[attr-defined]
    option = next((u.split("=", 1)[0] for u in unknown if u.startswith("-")), unknown[0])
    close = difflib.get_close_matches(option, list(target._option_string_actions), n=1, cutoff=0.6)
    target.error(f"unrecognized arguments: {' '.join(unknown)}." + (f" Did you mean {close[0]}?" if close else "")
                 + f" `trainer {command} --help` lists the options.")


class _ArgumentError(Exception):
    """argparse's error for a command, held back until the unknown options of the line are known."""


def _parse(parser: argparse.ArgumentParser, argv: list[str], command: str | None) -> tuple[argparse.Namespace, list[str]]:
    """``parse_known_args``, except that a line with a misspelt option is refused for that option (with the
    closest spelling) and not for what argparse tripped on next: in ``trainer config --devise cpu`` the
    value ``cpu`` would otherwise be read as the ``show`` action and refused as that."""
    commands: dict[str, argparse.ArgumentParser] = parser.commands  # type: ignore[attr-defined]
    target = commands.get(command) if command else None
    if target is None:
        return parser.parse_known_args(argv)

    def hold(message: str) -> NoReturn:
        raise _ArgumentError(message)

    original = target.error
    target.error = hold  # type: ignore[method-assign]
    try:
        return parser.parse_known_args(argv)
    except _ArgumentError as err:
        known = target._option_string_actions
        misspelt = [a for a in argv if a.startswith("--") and a.split("=", 1)[0] not in known
                    and not any(k.startswith(a.split("=", 1)[0]) for k in known)]
        target.error = original  # type: ignore[method-assign]
        if misspelt:
            _refuse_unknown(parser, argv, command, misspelt)
        target.error(str(err))
    finally:
        target.error = original  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # a config-driven stage (trainer_cli.py): fit/validate/predict, and `trainer test` given a run's config
    # (without one, `trainer test` is the built-in self-check)
    if argv and (argv[0] in ("fit", "validate", "predict") or (argv[0] == "test" and _wants_config(argv[1:]))):
        from trainer.cli import trainer_cli

        return trainer_cli.main(argv)
    parser = build_parser()
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and not {"-h", "--help"} & set(argv):
        _refuse_unknown(parser, argv, None, [first])
    args, unknown = _parse(parser, argv, first)
    if unknown:
        _refuse_unknown(parser, argv, args.command, unknown)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.run(args) or 0)
