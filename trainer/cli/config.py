"""``trainer config``: write the config file from a questionnaire, from flags, or from the defaults.

Each question is also a flag (``--num-processes 2``); a flag answers its question, so
``trainer config --default --strategy deepspeed --zero-stage 3`` asks nothing. An invalid
answer is explained in one line and asked again. ``trainer config show`` prints the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from trainer.cli import config_file
from trainer.cli.config_file import LaunchConfig

HELP = ("write the config file: a questionnaire, --default, or one flag per question "
        "(`trainer config show` prints it)")

Answers = dict[str, Any]  # LaunchConfig field, or "deepspeed.zero_stage", -> value


class UsageError(ValueError):
    """A flag's value is invalid, or contradicts another answer."""


# -- how an answer is read --------------------------------------------------------------------------
def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number; answer with digits, e.g. 2.") from None


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("y", "yes", "true", "1", "on"):
        return True
    if word in ("n", "no", "false", "0", "off"):
        return False
    raise ValueError(f"{text!r} is not yes or no; answer yes or no.")


def _parse_text(text: str) -> str:
    return text.strip()


@dataclasses.dataclass(frozen=True)
class Question:
    """One setting: its prompt, how to read an answer, its flags, and when it applies."""

    key: str
    prompt: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any] = _parse_text
    choices: tuple[Any, ...] = ()
    when: Callable[[Answers], bool] = lambda answers: True
    is_asked: bool = True  # False: a flag only, never asked
    # Answers taken for granted while checking this one, because a later question gives them
    # (auto_wrap_policy 'transformer' is valid once the layer class follows).
    assume: Callable[[Any], Answers] = lambda value: {}

    @property
    def dest(self) -> str:
        return self.flags[0].lstrip("-").replace("-", "_")


def _multi_machine(a: Answers) -> bool:
    return a.get("num_machines", 1) > 1


def _strategy_is(name: str) -> Callable[[Answers], bool]:
    return lambda a: a.get("strategy") == name


def _zero_stage(a: Answers) -> int:
    return a.get("deepspeed.zero_stage", config_file.DEEPSPEED_DEFAULTS["zero_stage"])


def _wrap_policy_is(name: str) -> Callable[[Answers], bool]:
    return lambda a: _strategy_is("fsdp")(a) and a.get("fsdp.auto_wrap_policy") == name


QUESTIONS: tuple[Question, ...] = (
    Question("num_machines", "How many machines (nodes) train together?", ("--num-machines", "--num_machines"),
             _parse_int),
    Question("min_machines", "Elastic: the fewest machines the run goes on with (needs rdzv_backend c10d)",
             ("--min-machines", "--min_machines"), _parse_int, is_asked=False,
             assume=lambda value: {"rdzv_backend": "c10d"}),
    Question("machine_rank", "What is the rank of this machine (0 is the main machine)?",
             ("--machine-rank", "--machine_rank"), _parse_int, when=_multi_machine),
    Question("main_process_ip", "What is the IP address or host name of the main machine?",
             ("--main-process-ip", "--main_process_ip"), when=_multi_machine),
    Question("main_process_port", "Which port on the main machine should the processes meet at?",
             ("--main-process-port", "--main_process_port"), _parse_int, when=_multi_machine),
    Question("num_processes", "How many processes per machine (usually one per GPU)?",
             ("--num-processes", "--num_processes"), _parse_int),
    Question("device", "Train on CPU or GPU?", ("--device",), choices=config_file.DEVICES),
    Question("gpu_ids", "Which GPUs (ids separated by commas, e.g. 0,1, or all)?", ("--gpu-ids", "--gpu_ids"),
             when=lambda a: a.get("device") == "gpu"),
    Question("mixed_precision", "Mixed precision?", ("--mixed-precision", "--mixed_precision"),
             choices=config_file.MIXED_PRECISIONS),
    Question("strategy", "Distributed strategy?", ("--strategy",), choices=config_file.STRATEGY_CHOICES),
    Question("deepspeed.zero_stage", "DeepSpeed ZeRO stage?", ("--zero-stage", "--zero_stage"), _parse_int,
             choices=config_file.ZERO_STAGES, when=_strategy_is("deepspeed")),
    Question("deepspeed.offload_optimizer_device", "Offload the optimizer state to?",
             ("--offload-optimizer-device", "--offload_optimizer_device"), choices=config_file.OFFLOAD_DEVICES,
             when=lambda a: _strategy_is("deepspeed")(a) and _zero_stage(a) >= 1),
    Question("deepspeed.offload_param_device", "Offload the parameters to?",
             ("--offload-param-device", "--offload_param_device"), choices=config_file.OFFLOAD_DEVICES,
             when=lambda a: _strategy_is("deepspeed")(a) and _zero_stage(a) == 3),
    Question("fsdp.sharding_strategy", "FSDP sharding strategy?", ("--fsdp-sharding-strategy",),
             choices=config_file.SHARDING_STRATEGIES, when=_strategy_is("fsdp")),
    Question("fsdp.cpu_offload", "Offload parameters and gradients to the CPU?", ("--fsdp-cpu-offload",),
             _parse_bool, choices=("yes", "no"), when=_strategy_is("fsdp")),
    Question("fsdp.auto_wrap_policy", "Which modules should FSDP wrap (shard) separately?",
             ("--fsdp-auto-wrap-policy",), choices=config_file.AUTO_WRAP_POLICIES, when=_strategy_is("fsdp"),
             assume=lambda v: {"fsdp.transformer_layer_cls": "Layer"} if str(v).lower() == "transformer" else {}),
    Question("fsdp.transformer_layer_cls", "Class name of the transformer layer to wrap (e.g. Block)?",
             ("--fsdp-transformer-layer-cls",), when=_wrap_policy_is("transformer")),
    Question("fsdp.min_num_params", "Wrap every module with at least how many parameters?",
             ("--fsdp-min-num-params",), _parse_int, when=_wrap_policy_is("size")),
    Question("fsdp.activation_checkpointing", "Recompute activations in the backward (activation checkpointing)?",
             ("--fsdp-activation-checkpointing",), _parse_bool, choices=("yes", "no"), when=_strategy_is("fsdp")),
    Question("gradient_accumulation_steps", "How many micro-batches per optimizer step (gradient accumulation)?",
             ("--gradient-accumulation-steps", "--gradient_accumulation_steps"), _parse_int),
    Question("max_restarts", "Restarts after a worker fails", ("--max-restarts", "--max_restarts"), _parse_int,
             is_asked=False),
    Question("rdzv_backend", "Rendezvous backend", ("--rdzv-backend", "--rdzv_backend"),
             choices=config_file.RDZV_BACKENDS, is_asked=False),
    Question("rdzv_timeout", "Seconds to wait for every machine to join", ("--rdzv-timeout", "--rdzv_timeout"),
             _parse_int, is_asked=False),
    Question("collective_timeout", "Seconds a collective waits for the other processes before failing",
             ("--collective-timeout", "--collective_timeout"), _parse_int, is_asked=False),
)


# -- answers to a LaunchConfig ---------------------------------------------------------------------
def _machine_default(key: str) -> Any:
    """Defaults that depend on this machine: one process per GPU when CUDA is available."""
    import torch

    if key == "device":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def default_for(key: str) -> Any:
    """The value an empty answer (or ``--default``) gives ``key``."""
    if key in ("device", "num_processes"):
        return _machine_default(key)
    section, _, name = key.partition(".")
    if name:
        return {"deepspeed": config_file.DEEPSPEED_DEFAULTS, "fsdp": config_file.FSDP_DEFAULTS}[section][name]
    return next(f.default for f in dataclasses.fields(LaunchConfig) if f.name == key)


def build(answers: Answers) -> LaunchConfig:
    """A validated ``LaunchConfig`` from answers; unanswered settings take their defaults."""
    kwargs: dict[str, Any] = {}
    for key, value in answers.items():
        section, _, name = key.partition(".")
        if name:
            kwargs.setdefault(section, {})[name] = value
        else:
            kwargs[key] = value
    return LaunchConfig(**kwargs)


def _accept(answers: Answers, question: Question, value: Any) -> Any:
    """Check ``value`` against the answers so far; return its canonical spelling."""
    cfg = build({**question.assume(value), **answers, question.key: value})
    section, _, name = question.key.partition(".")
    return getattr(cfg, section)[name] if name else getattr(cfg, question.key)


# -- asking -----------------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def _prompt(question: Question, default: Any) -> str:
    choices = f" ({', '.join(map(str, question.choices))})" if question.choices else ""
    shown = f" [{_show(default)}]" if default is not None else ""
    return f"{question.prompt}{choices}{shown}: "


def ask(question: Question, answers: Answers) -> Any:
    """Ask until the answer is valid; an empty answer takes the default. EOFError if input ends."""
    default = default_for(question.key)
    while True:
        text = input(_prompt(question, default)).strip()
        try:
            return _accept(answers, question, question.parse(text) if text else default)
        except (TypeError, ValueError) as err:
            print(f"  Invalid answer: {config_file.in_file_words(str(err))} Please try again.")


def _from_flag(question: Question, raw: str, answers: Answers) -> Any:
    try:
        return _accept(answers, question, question.parse(raw))
    except (TypeError, ValueError) as err:
        text = config_file.in_file_words(str(err))  # the flag and the raw value say "<setting> <value>" already
        text = text.split(": ", 1)[1] if text.startswith(f"{question.key} ") and ": " in text else text
        raise UsageError(f"{question.flags[0]} {raw!r}: {text}") from None


def _from_default(question: Question, answers: Answers) -> Any:
    try:
        return _accept(answers, question, default_for(question.key))
    except (TypeError, ValueError) as err:
        raise UsageError(f"--default cannot answer {question.prompt!r} given the other answers: {err} "
                         f"Pass {question.flags[0]} VALUE.") from None


def collect(args: argparse.Namespace) -> LaunchConfig:
    """Answer every question that applies: from its flag, else the default (``--default``), else by asking."""
    answers: Answers = {}
    greeted = False
    for question in QUESTIONS:
        raw = getattr(args, question.dest)
        if raw is not None:
            answers[question.key] = _from_flag(question, raw, answers)
        elif not question.is_asked or not question.when(answers):
            continue
        elif args.default:
            answers[question.key] = _from_default(question, answers)
        else:
            if not greeted:
                print("Answer each question, or press Enter to keep the default shown in [brackets].")
                greeted = True
            answers[question.key] = ask(question, answers)
    try:
        return build(answers)
    except (TypeError, ValueError) as err:  # an earlier flag contradicts a later answer
        raise UsageError(config_file.in_file_words(str(err))) from None


# -- the command ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``trainer config [show] [--default] [--config-file PATH] [--<question> VALUE ...]``."""
    parser.add_argument("action", nargs="?", choices=["show"], help="show: print the current config file")
    parser.add_argument("--default", action="store_true", help="write the defaults for every unanswered question "
                        "without asking")
    parser.add_argument("--config-file", "--config_file", metavar="PATH",
                        help=f"file to write or show (default: ${config_file.ENV_VAR}, else "
                        f"{config_file.DEFAULT_LOCATION})")
    group = parser.add_argument_group("answers", "each flag answers one question, which is then not asked")
    for q in QUESTIONS:
        extra: dict[str, Any] = {"nargs": "?", "const": "yes"} if q.parse is _parse_bool else {}
        group.add_argument(*q.flags, dest=q.dest, metavar=_metavar(q), help=q.prompt, **extra)


def _metavar(question: Question) -> str:
    if question.choices:
        return "{" + ",".join(map(str, question.choices)) + "}"
    return "N" if question.parse is _parse_int else "TEXT"


def show(path: Path) -> int:
    """Print the config file's path and contents; 1 if it is missing or invalid."""
    print(f"Config file: {path}")
    if not path.is_file():
        print("No config file there yet. Create one with `trainer config` or `trainer config --default`.")
        return 1
    print(path.read_text(encoding="utf-8"), end="")
    try:
        config_file.load_config(path)
    except (TypeError, ValueError) as err:
        print(f"\nThis file is not valid: {err}", file=sys.stderr)
        return 1
    return 0


def _warn_if_no_gpu() -> None:
    """``device: gpu`` on a machine where torch sees no GPU: the file may be meant for other machines, so
    it is written, with a warning that `trainer launch` here would fail."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    why = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device or driver"
    print(f"trainer config: warning: device gpu, but torch {torch.__version__} sees no GPU on this machine ({why}). "
          "`trainer launch` here would fail; answer cpu for this machine (`trainer config --device cpu`), or keep "
          "gpu if the file is for machines that have GPUs (`trainer env` shows what torch sees).", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    path = Path(args.config_file).expanduser() if args.config_file else config_file.config_path()
    if args.action == "show":
        if args.default or any(getattr(args, q.dest) is not None for q in QUESTIONS):
            print("trainer config show: error: show takes only --config-file; drop the other flags, or drop "
                  "`show` to write a new file.", file=sys.stderr)
            return 2
        return show(path)
    try:
        cfg = collect(args)
    except UsageError as err:
        print(f"trainer config: error: {err}", file=sys.stderr)
        return 2
    except EOFError:
        print("\ntrainer config: error: the input ended before every question was answered. Answer them all, "
              "or pass --default or a flag per question.", file=sys.stderr)
        return 1
    if cfg.device == "gpu":
        _warn_if_no_gpu()
    try:
        print(f"Configuration saved to {config_file.save_config(cfg, path)}")
    except OSError as err:
        print(f"trainer config: error: cannot write {path}: {err}. Pick a writable location with "
              f"--config-file or ${config_file.ENV_VAR}.", file=sys.stderr)
        return 1
    return 0
