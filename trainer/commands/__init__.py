"""Subcommands of the ``trainer`` command. Importing this package registers each in ``trainer.cli.COMMANDS``."""

from trainer.commands import config, env, launch, merge_weights, selftest

__all__ = ["config", "env", "launch", "merge_weights", "selftest"]
