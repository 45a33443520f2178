"""``TrainerCLI`` and ``trainer fit|validate|test|predict --config run.yaml``: a whole run from a YAML file
plus command-line overrides, as Lightning's ``LightningCLI`` (built on jsonargparse, the optional extra ``cli``).

    trainer fit --config run.yaml --model.lr 0.01 --trainer.max_epochs 5
    trainer fit --config run.yaml --print_config          # the resolved config, then exit
    python train.py fit --model MyNet --data MyData       # TrainerCLI(...) in a user's script

Every setting of ``Trainer`` (its wiring arguments and every ``TrainerConfig`` field) is a ``trainer.`` key;
callbacks and loggers are given as ``class_path``/``init_args``; the model and the datamodule are classes given
in code (``TrainerCLI(MyNet, MyData)``) or chosen by the config (``model: {class_path: pkg.MyNet}``, or
``--model MyNet`` for an imported subclass). The resolved config is written as ``config.yaml`` to the run's log
directory and into each checkpoint (``"cli_config"``). A bad key, type or value stops with the key's path and,
for an unknown key, the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import random
import re
import sys
import typing
from typing import Any, Optional, Union

import torch

from trainer import DataModule, Trainer, TrainModule, seed_everything
from trainer.callbacks import Callback, TrainerView
from trainer.callbacks.logger import Logger
from trainer.trainer_config import TrainerConfig
from trainer.strategies import Strategy

STAGES = ("fit", "validate", "test", "predict")
_STAGE_HELP = {"fit": "train a model from a config file (and command-line overrides)",
               "validate": "run validation from a config file", "test": "run the test set from a config file",
               "predict": "run predictions from a config file"}


def _require_jsonargparse() -> Any:
    try:
        import jsonargparse
    except ImportError:
        raise ImportError("The config-driven command line (TrainerCLI, `trainer fit --config ...`) needs jsonargparse: "
                          "pip install 'trainer[cli]' (or pip install 'jsonargparse[signatures]').") from None
    return jsonargparse


def _trainer_arguments(defaults: dict[str, Any]) -> Any:
    """A function whose signature is every Trainer setting, with its type (what jsonargparse reads)."""
    wiring = [("accelerator", str, "auto"), ("strategy", Union[str, Strategy], "auto"),
              ("devices", Union[int, str, list[int]], "auto"), ("num_nodes", int, 1),
              ("precision", Union[str, int, None], None), ("callbacks", Optional[list[Callback]], None),
              ("logger", Union[bool, Logger, list[Logger], None], None), ("profiler", Optional[str], None)]
    hints = typing.get_type_hints(TrainerConfig)
    fields = [(f.name, hints[f.name], f.default) for f in dataclasses.fields(TrainerConfig)]
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name, default),
                                annotation=kind) for name, kind, default in [*wiring, *fields]]

    def trainer(**settings: Any) -> None:
        """The Trainer's settings."""

    trainer.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    trainer.__annotations__ = {p.name: p.annotation for p in params}
    return trainer


class SaveConfigCallback(Callback):
    """Writes the resolved config to ``<log_dir>/config.yaml`` (rank zero, at setup) and into each checkpoint
    under ``"cli_config"``, so a run's logs and checkpoints say exactly how it was configured.

    Args:
        overwrite: replace an existing ``config.yaml`` (else refuse: another run wrote there).
    """

    def __init__(self, parser: Any, config: Any, config_filename: str = "config.yaml", overwrite: bool = False) -> None:
        self.parser, self.config, self.config_filename, self.overwrite = parser, config, config_filename, overwrite
        self.text = parser.dump(config)

    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        path = os.path.join(trainer.log_dir, self.config_filename)
        if os.path.exists(path) and not self.overwrite:
            raise RuntimeError(f"SaveConfigCallback: {path} exists (another run logged here). Give this run its own "
                               "log directory (e.g. --trainer.default_root_dir), or pass "
                               "save_config_kwargs={'overwrite': True} to replace it.")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(self.text)

    def on_save_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["cli_config"] = self.text


class TrainerCLI:
    """Build the model, datamodule and Trainer from a config file and the command line, then run the subcommand.

    Example (``train.py``; run ``python train.py fit --config run.yaml --trainer.max_epochs 3``):
        >>> TrainerCLI(MyNet, MyData)  # doctest: +SKIP

    Args:
        model_class: the module's class (its ``__init__`` arguments become ``model.`` keys); None: any
            ``TrainModule`` subclass, chosen by ``model: {class_path: ...}`` / ``--model``.
        datamodule_class: likewise for the data (``data.`` keys); None: optional, chosen by the config.
        save_config_callback: the callback that saves the config (None: not saved).
        save_config_kwargs: its keyword arguments (``overwrite``, ``config_filename``).
        trainer_class: the Trainer class to build.
        trainer_defaults: defaults for ``trainer.`` keys that the config and command line override.
        seed_everything_default: ``seed_everything`` key's default: True (a random seed, written to the
            saved config), an int, or False (no seeding).
        subclass_mode_model, subclass_mode_data: accept subclasses of the given classes (``class_path``).
        args: the arguments (default ``sys.argv[1:]``), or a dict of the config.
        run: run the subcommand (fit/validate/test/predict); False: only build ``self.model``,
            ``self.datamodule`` and ``self.trainer`` from the arguments, without a subcommand.
        parser_kwargs: extra keyword arguments for the jsonargparse parser.
    """

    def __init__(self, model_class: type | None = None, datamodule_class: type | None = None,
                 save_config_callback: type | None = SaveConfigCallback, save_config_kwargs: dict | None = None,
                 trainer_class: type = Trainer, trainer_defaults: dict[str, Any] | None = None,
                 seed_everything_default: bool | int = True, subclass_mode_model: bool = False,
                 subclass_mode_data: bool = False, args: Any = None, run: bool = True,
                 parser_kwargs: dict[str, Any] | None = None, prog: str | None = None) -> None:
        self._jsonargparse = _require_jsonargparse()
        self.model_class, self.datamodule_class = model_class, datamodule_class
        self.subclass_mode_model = subclass_mode_model or model_class is None
        self.subclass_mode_data = subclass_mode_data or datamodule_class is None
        self.trainer_class, self.trainer_defaults = trainer_class, dict(trainer_defaults or {})
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = {"allow_abbrev": False, **(parser_kwargs or {})}
        self.prog = prog or os.path.basename(sys.argv[0])
        self.parser = self._build_parser(run)
        self.config = self._parse(args)
        self.subcommand = self.config["subcommand"] if run else None
        config = self.config[self.subcommand] if run else self.config
        self._seed(config)
        instantiate = getattr(self.parser, "instantiate", None) or self.parser.instantiate_classes  # 4.49 renamed it
        self.config_init = instantiate(self.config)
        init = self.config_init[self.subcommand] if run else self.config_init
        self.model = init.get("model")
        self.datamodule = init.get("data")
        _configure_optimizers_from(self.model, init.get("optimizer"), init.get("lr_scheduler"))
        callbacks = []
        if save_config_callback is not None:
            sub = self.parser._subcommands_action._name_parser_map[self.subcommand] if run else self.parser
            callbacks.append(save_config_callback(sub, config, **(save_config_kwargs or {})))
        self.trainer = self._instantiate_trainer(init["trainer"], callbacks)
        if run:
            assert self.subcommand is not None  # parsed with subcommands: jsonargparse requires one
            self._run_subcommand(self.subcommand, init)

    # -- the parser ------------------------------------------------------------------------------
    def _stage_parser(self) -> Any:
        ja = self._jsonargparse
        parser = ja.ArgumentParser(exit_on_error=False, **self.parser_kwargs)
        parser.add_argument("-c", "--config", action=ja.ActionConfigFile, help="a YAML config file (repeatable)")
        parser.add_argument("--seed_everything", type=Union[bool, int], default=self.seed_everything_default,
                            help="True: a random seed (saved in the config); an int: that seed; False: no seeding")
        parser.add_function_arguments(_trainer_arguments(self.trainer_defaults), "trainer")
        if self.subclass_mode_model:
            parser.add_subclass_arguments(self.model_class or TrainModule, "model", required=True,
                                          help="the TrainModule: a class_path and its init_args")
        else:
            parser.add_class_arguments(self.model_class, "model")
        if self.subclass_mode_data:
            parser.add_subclass_arguments(self.datamodule_class or DataModule, "data", required=False,
                                          help="the DataModule: a class_path and its init_args")
        else:
            parser.add_class_arguments(self.datamodule_class, "data")
        # Lightning's optimizer/lr_scheduler groups: given, they replace the module's configure_optimizers
        parser.add_subclass_arguments(torch.optim.Optimizer, "optimizer", required=False, skip={"params"},
                                      instantiate=False, fail_untyped=False,
                                      help="an optimizer for the module's parameters, e.g. --optimizer Adam")
        parser.add_subclass_arguments(torch.optim.lr_scheduler.LRScheduler, "lr_scheduler", required=False,
                                      skip={"optimizer"}, instantiate=False, fail_untyped=False,
                                      help="a scheduler of that optimizer, stepped every epoch, e.g. StepLR")
        parser.add_argument("--ckpt_path", type=Optional[str], default=None,
                            help="fit: resume from it ('last' for the newest); others: load its weights ('best')")
        return parser

    def _build_parser(self, run: bool) -> Any:
        if not run:
            return self._stage_parser()
        ja = self._jsonargparse
        parser = ja.ArgumentParser(prog=self.prog, exit_on_error=False, **self.parser_kwargs)
        subcommands = parser.add_subcommands(required=True, dest="subcommand")
        for stage in STAGES:
            subcommands.add_subcommand(stage, self._stage_parser(), help=_STAGE_HELP[stage])
        return parser

    def _parse(self, args: Any) -> Any:
        try:
            if isinstance(args, dict):
                return self.parser.parse_object(args)
            return self.parser.parse_args(sys.argv[1:] if args is None else list(args))
        except self._jsonargparse.ArgumentError as err:
            message = f"{self.prog}: error: {err}{self._did_you_mean(str(err))}"
            print(message, file=sys.stderr)
            raise SystemExit(2) from None

    def _did_you_mean(self, message: str) -> str:
        nested = re.search(r"class_path '([^']+)':\s*(?:Option|Key) '([^']+)' is not", message)
        if nested:  # an init_args key of a class chosen by class_path: its __init__'s parameters
            return _closest_parameter(nested.group(1), nested.group(2))
        found = (re.search(r"unrecognized arguments: --(\S+)", message)
                 or re.search(r"does not accept (?:option|nested key) '([^']+)'", message)
                 or re.search(r"Key '([^']+)' is not expected", message))
        if not found:
            return ""
        key = found.group(1)
        known = _flat_keys(self._stage_parser().get_defaults())
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not close:  # a key inside one group: compare the last part within the same prefix
            prefix, _, last = key.rpartition(".")
            siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0].endswith(prefix)]
            close = [f"{prefix}.{m}" for m in difflib.get_close_matches(last, siblings, n=1, cutoff=0.6)]
        return f"\nDid you mean '{close[0]}'?" if close else ""

    # -- building and running --------------------------------------------------------------------
    def _seed(self, config: Any) -> None:
        seed = config.get("seed_everything")
        if seed is True:  # a seed drawn now, written into the config that is saved with the run
            config["seed_everything"] = seed_everything(random.randint(0, 2**32 - 1))
        elif seed is not False and seed is not None:
            seed_everything(int(seed))

    def _instantiate_trainer(self, settings: Any, extra_callbacks: list[Callback]) -> Any:
        defaults = {name: p.default for name, p in inspect.signature(_trainer_arguments({})).parameters.items()}
        given = dict(settings.items() if hasattr(settings, "items") else vars(settings))
        # only what differs from the defaults: the Trainer then applies its own precedence (launch flags, config file)
        kwargs = {k: v for k, v in given.items() if not _same(v, defaults.get(k))}
        callbacks = list(kwargs.pop("callbacks", None) or [])
        try:
            return self.trainer_class(callbacks=[*callbacks, *extra_callbacks], **kwargs)
        except (ValueError, TypeError) as err:  # the Trainer's own check: name the config key it came from
            named = re.search(r"Trainer\((\w+)=", str(err))
            if named and hasattr(err, "add_note"):  # Python 3.11+
                err.add_note(f"From the config key 'trainer.{named.group(1)}' (a YAML file's trainer: section, or "
                             f"--trainer.{named.group(1)} on the command line).")
            raise

    def _run_subcommand(self, subcommand: str, init: Any) -> Any:
        kwargs: dict[str, Any] = {"datamodule": self.datamodule, "ckpt_path": init.get("ckpt_path")}
        return getattr(self.trainer, subcommand)(self.model, **kwargs)


def _configure_optimizers_from(model: Any, optimizer: Any, lr_scheduler: Any) -> None:
    """``--optimizer`` (and ``--lr_scheduler``) given: the module's ``configure_optimizers`` builds them instead
    of its own (said once when the module defines one), as Lightning's CLI does."""
    if optimizer is None:
        if lr_scheduler is not None:
            raise ValueError("--lr_scheduler was given without --optimizer: the scheduler needs the optimizer the CLI "
                             "builds. Add --optimizer (e.g. --optimizer SGD --optimizer.lr 0.1), or set the scheduler "
                             "in configure_optimizers.")
        return
    if type(model).configure_optimizers is not TrainModule.configure_optimizers:
        from trainer.logs.console import rank_zero_info

        rank_zero_info(f"--optimizer {optimizer['class_path']}: it replaces {type(model).__name__}.configure_optimizers "
                       "for this run.")

    def configure_optimizers() -> Any:
        opt = _instantiate(optimizer, model.parameters())
        if lr_scheduler is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": _instantiate(lr_scheduler, opt), "interval": "epoch"}}

    model.configure_optimizers = configure_optimizers


def _instantiate(spec: Any, first: Any) -> Any:
    """``class_path(first, **init_args)`` from a jsonargparse subclass spec."""
    import importlib

    module, _, name = spec["class_path"].rpartition(".")
    init_args = spec.get("init_args") or {}
    init_args = dict(init_args.items() if hasattr(init_args, "items") else vars(init_args).items())
    return getattr(importlib.import_module(module), name)(first, **init_args)


def _closest_parameter(class_path: str, key: str) -> str:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    except (ImportError, AttributeError, ValueError, TypeError):
        return ""
    close = difflib.get_close_matches(key, params, n=1, cutoff=0.6)
    return f"\nDid you mean '{close[0]}' (init_args of {class_path})?" if close else ""


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _flat_keys(namespace: Any, prefix: str = "") -> list[str]:
    keys = []
    items = namespace.items() if hasattr(namespace, "items") else vars(namespace).items()
    for key, value in items:
        full = f"{prefix}{key}"
        keys.append(full)
        if hasattr(value, "items") and not isinstance(value, dict) and "class_path" not in value:
            keys.extend(_flat_keys(value, full + "."))
    return keys


def wants_config(argv: list[str]) -> bool:
    """``trainer test ARGS`` means the config-driven test stage when ARGS configure a run (``--config``/``-c``,
    ``--print_config``, ``--model...``, ``--data...``, ``--trainer...``, ``--ckpt_path``, ``--seed_everything``);
    otherwise it is the built-in self-check (whose own flags, e.g. ``--config_file``, are unchanged)."""
    heads = ("--config", "-c", "--print_config", "--model", "--data", "--trainer", "--ckpt_path", "--seed_everything")
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in heads or name.startswith(("--model.", "--data.", "--trainer.", "--print_config")):
            return True
    return False


def main(argv: list[str]) -> int:
    """``trainer fit|validate|test|predict ...``: modules named by ``class_path`` are imported from the current
    directory too, as ``python -m`` would."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        TrainerCLI(args=argv, prog="trainer")
    except ImportError as err:
        print(f"trainer {argv[0] if argv else ''}: {err}", file=sys.stderr)
        return 2
    return 0
