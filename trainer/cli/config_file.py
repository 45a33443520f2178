"""The ``trainer`` command's YAML config file: where it lives, what it holds, how it is read and written.

``trainer config`` writes the file and ``trainer launch`` reads it. Precedence, highest first:
an argument in code, a ``trainer launch`` flag, this file, the built-in default.

Example:
    >>> cfg = LaunchConfig(num_processes=2, strategy="deepspeed", deepspeed={"zero_stage": 3})
    >>> cfg.deepspeed["offload_param_device"]
    'none'
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
import tempfile
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Callable

from trainer.strategies.support import did_you_mean, quoted
from trainer.strategies.fsdp import AUTO_WRAP_POLICIES, SHARDING_STRATEGIES

ENV_VAR = "TRAINER_CONFIG_FILE"
DEFAULT_LOCATION = "~/.config/trainer/default_config.yaml"

DEVICES = ("cpu", "gpu")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
STRATEGY_CHOICES = ("ddp", "fsdp", "deepspeed", "single_device")
RDZV_BACKENDS = ("static", "c10d")
ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_DEVICES = ("none", "cpu")

DEEPSPEED_DEFAULTS: dict[str, Any] = {
    "zero_stage": 2, "offload_optimizer_device": "none", "offload_param_device": "none",
}
FSDP_DEFAULTS: dict[str, Any] = {
    "sharding_strategy": "FULL_SHARD", "cpu_offload": False, "auto_wrap_policy": "size",
    "transformer_layer_cls": None, "min_num_params": 100_000_000, "activation_checkpointing": False,
}

_RERUN = "or rewrite the file with `trainer config`."


def _error(label: str, value: Any, problem: str) -> str:
    return f"LaunchConfig({label}={value!r}): {problem}"


def in_file_words(message: str) -> str:
    """A ``LaunchConfig`` error as the command line shows it: the setting as the file and the flags name
    it (``num_machines 0: ...``), without the class the code builds (``LaunchConfig(num_machines=0): ...``)."""
    message = re.sub(r"LaunchConfig\(([\w.]+)=\.\.\.\): ", r"section \1: ", message)
    message = re.sub(r"LaunchConfig\(([\w.]+)=(.*?)\): ", r"\1 \2: ", message)
    return message.replace("LaunchConfig: unknown key", "unknown setting")


# -- one value at a time ----------------------------------------------------------------------
def _int_at_least(minimum: int, label: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(_error(label, value, f"expected a whole number >= {minimum}, got {type(value).__name__}. "
                               f"Write it without quotes or decimals, e.g. {label.split('.')[-1]}: {minimum}."))
    if value < minimum:
        raise ValueError(_error(label, value, f"expected a whole number >= {minimum}. "
                                f"Set {label} to {minimum} or more."))
    return int(value)


def _port(label: str, value: Any) -> int:
    value = _int_at_least(1, label, value)
    if value > 65535:
        raise ValueError(_error(label, value, "a TCP port lies in 1..65535. Pick a free port such as 29500."))
    return value


def _choice(choices: tuple[Any, ...], label: str, value: Any) -> Any:
    """The canonical spelling of ``value`` among ``choices``; strings match case-insensitively."""
    by_key = {str(c).lower(): c for c in choices}
    if not isinstance(value, bool) and isinstance(value, (str, int)) and str(value).strip().lower() in by_key:
        return by_key[str(value).strip().lower()]
    hint = did_you_mean(value, by_key)
    for key, canonical in by_key.items():  # suggest the canonical spelling, e.g. 'FULL_SHARD'
        if hint.endswith(f"{key!r}?"):
            hint = f" Did you mean {canonical!r}?"
    raise ValueError(_error(label, value, f"expected one of {quoted(map(str, choices))}.{hint}"))


def _device(label: str, value: Any) -> str:
    # "cuda" is torch's word for a GPU; users write it as often as "gpu".
    return "gpu" if isinstance(value, str) and value.strip().lower() == "cuda" else _choice(DEVICES, label, value)


# The Trainer's precision names, accepted where Accelerate's are asked for: the same setting in the other spelling.
_TRAINER_PRECISIONS = {"bf16-mixed": "bf16", "16-mixed": "fp16", "fp16-mixed": "fp16", "32-true": "no", "32": "no",
                       "fp32": "no"}


def _mixed_precision(label: str, value: Any) -> str:
    # YAML 1.1 reads an unquoted `no` as False; a user who writes `mixed_precision: no` means "no".
    if value is False:
        return "no"
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip().lower() in _TRAINER_PRECISIONS:
        return _TRAINER_PRECISIONS[str(value).strip().lower()]
    return _choice(MIXED_PRECISIONS, label, value)


def _offload_device(label: str, value: Any) -> str:
    return "none" if value is None else _choice(OFFLOAD_DEVICES, label, value)


def _bool(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(_error(label, value, "expected true or false (unquoted in YAML)."))
    return value


def _host(label: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or " " in value.strip():
        raise ValueError(_error(label, value, "expected the IP address or host name of the main machine, "
                                "e.g. '10.0.0.1' or 'node-0'."))
    return value.strip()


def _gpu_ids(label: str, value: Any) -> str:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = str(value)  # YAML reads `gpu_ids: 0` as an int
    text = value.replace(" ", "") if isinstance(value, str) else ""
    if text.lower() == "all":
        return "all"
    ids = text.split(",")
    if not all(i.isdigit() for i in ids):
        raise ValueError(_error(label, value, "expected 'all' or GPU indices separated by commas, such as '0,1'."))
    if len(set(map(int, ids))) != len(ids):
        raise ValueError(_error(label, value, "a GPU index appears twice. List each GPU once, e.g. '0,1'."))
    return ",".join(str(int(i)) for i in ids)


def _layer_cls(label: str, value: Any) -> str | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else []
    if not names or not all(n.isidentifier() for n in names):
        raise ValueError(_error(label, value, "expected the class name of a repeated layer, e.g. 'Block', "
                                "or several separated by commas, e.g. 'EncoderLayer,DecoderLayer'."))
    return ",".join(names)


# -- the deepspeed and fsdp sections ------------------------------------------------------------
_DEEPSPEED_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "zero_stage": partial(_choice, ZERO_STAGES),
    "offload_optimizer_device": _offload_device,
    "offload_param_device": _offload_device,
}
_FSDP_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "sharding_strategy": partial(_choice, SHARDING_STRATEGIES),
    "cpu_offload": _bool,
    "auto_wrap_policy": partial(_choice, AUTO_WRAP_POLICIES),
    "transformer_layer_cls": _layer_cls,
    "min_num_params": partial(_int_at_least, 1),
    "activation_checkpointing": _bool,
}


def _unknown_keys_error(where: str, unknown: list[str], known: Any) -> str:
    return (f"{where}: unknown key {unknown[0]!r}. Known keys: {', '.join(known)}."
            f"{did_you_mean(unknown[0], known)} Remove or rename it.")


def _section(defaults: dict[str, Any], checks: dict[str, Callable[[str, Any], Any]], label: str,
             value: Any) -> dict[str, Any] | None:
    """Check one nested section; missing keys take their defaults."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(_error(label, value, f"expected a mapping with keys {', '.join(defaults)}, or null."))
    unknown = [str(k) for k in value if k not in defaults]
    if unknown:
        raise ValueError(_unknown_keys_error(f"LaunchConfig({label}=...)", unknown, defaults))
    merged = {**defaults, **value}
    return {key: checks[key](f"{label}.{key}", merged[key]) for key in defaults}


def _check_deepspeed(ds: dict[str, Any]) -> None:
    stage = ds["zero_stage"]
    if ds["offload_param_device"] == "cpu" and stage != 3:
        raise ValueError(_error("deepspeed.offload_param_device", "cpu", f"parameters can only be offloaded with "
                                f"ZeRO stage 3, but zero_stage={stage}. Set zero_stage: 3, or "
                                "offload_param_device: none."))
    if ds["offload_optimizer_device"] == "cpu" and stage < 1:
        raise ValueError(_error("deepspeed.offload_optimizer_device", "cpu", "optimizer offload needs ZeRO stage "
                                "1 or higher, but zero_stage=0. Set zero_stage: 1 (or 2, 3), or "
                                "offload_optimizer_device: none."))


def _check_fsdp(fsdp: dict[str, Any]) -> None:
    policy, layer_cls = fsdp["auto_wrap_policy"], fsdp["transformer_layer_cls"]
    if policy == "transformer" and layer_cls is None:
        raise ValueError(_error("fsdp.auto_wrap_policy", policy, "wrapping by transformer layer needs the layer's "
                                "class name. Set fsdp.transformer_layer_cls, e.g. 'Block', or use "
                                "auto_wrap_policy: size."))
    if policy != "transformer" and layer_cls is not None:
        raise ValueError(_error("fsdp.transformer_layer_cls", layer_cls, f"only used with auto_wrap_policy "
                                f"'transformer', but it is {policy!r}. Remove transformer_layer_cls or set "
                                "auto_wrap_policy: transformer."))


# -- the file's schema ----------------------------------------------------------------------------
@dataclasses.dataclass(slots=True, kw_only=True)
class LaunchConfig:
    """What ``trainer launch`` needs to start a run: machines, processes, devices, numerics, strategy.

    Args:
        num_machines: machines (nodes) that train together; with ``min_machines``, the most that may.
        min_machines: elastic membership: the fewest machines the run goes on with (torchrun's
            ``--nnodes MIN:MAX``); machines may leave and join, and the run re-forms at each change
            (``max_restarts`` >= 1, ``rdzv_backend: c10d``). None: exactly ``num_machines``.
        machine_rank: this machine's rank, 0 for the main machine; smaller than ``num_machines``.
        main_process_ip: address or host name of the rank-0 machine.
        main_process_port: TCP port on the main machine for the rendezvous (1..65535).
        num_processes: processes on each machine (usually one per GPU).
        device: ``"cpu"`` or ``"gpu"`` (``"cuda"`` is read as ``"gpu"``).
        gpu_ids: ``"all"`` or the GPU indices to use on each machine, e.g. ``"0,1"``.
        mixed_precision: ``"no"``, ``"fp16"`` or ``"bf16"`` (YAML's unquoted ``no``, read as False,
            means ``"no"``).
        strategy: ``"ddp"``, ``"fsdp"``, ``"deepspeed"`` or ``"single_device"``.
        deepspeed: only with ``strategy="deepspeed"``: ``zero_stage`` (0-3), ``offload_optimizer_device``
            and ``offload_param_device`` (``"none"`` or ``"cpu"``). Missing keys, or the whole section,
            take ``DEEPSPEED_DEFAULTS``: with that strategy it is always a full dict, otherwise None.
        fsdp: only with ``strategy="fsdp"``: ``sharding_strategy``, ``cpu_offload``, ``auto_wrap_policy``
            (``"transformer"``, ``"size"``, ``"none"``), ``transformer_layer_cls``, ``min_num_params``,
            ``activation_checkpointing``; filled from ``FSDP_DEFAULTS`` as ``deepspeed`` is.
        gradient_accumulation_steps: micro-batches per optimizer step.
        max_restarts: how often torchrun restarts the workers after a failure.
        rdzv_backend: ``"static"`` (fixed ranks) or ``"c10d"`` (elastic rendezvous).
        rdzv_timeout: seconds to wait for every machine to join.
        collective_timeout: seconds a collective (all-reduce, barrier, ...) waits for the other ranks
            before the job ends with an error naming the missing rank(s): ``DDPStrategy(timeout=...)``.
    """

    num_machines: int = 1
    min_machines: int | None = None
    machine_rank: int = 0
    main_process_ip: str = "127.0.0.1"
    main_process_port: int = 29500
    num_processes: int = 1
    device: str = "cpu"
    gpu_ids: str = "all"
    mixed_precision: str = "no"
    strategy: str = "ddp"
    deepspeed: dict[str, Any] | None = None
    fsdp: dict[str, Any] | None = None
    gradient_accumulation_steps: int = 1
    max_restarts: int = 0
    rdzv_backend: str = "static"
    rdzv_timeout: int = 900
    collective_timeout: int = 600

    def __post_init__(self) -> None:
        for name, check in _FIELD_CHECKS.items():
            setattr(self, name, check(name, getattr(self, name)))
        if self.strategy in ("deepspeed", "fsdp") and getattr(self, self.strategy) is None:
            # The strategy's section is always a full dict, so readers need no defaults of their own.
            setattr(self, self.strategy, _FIELD_CHECKS[self.strategy](self.strategy, {}))
        _check_combinations(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LaunchConfig":
        """Build from a mapping (a parsed YAML file); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise TypeError(f"LaunchConfig.from_dict({data!r}): expected a mapping of settings such as "
                            f"{{'num_processes': 2}}, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            raise ValueError(_unknown_keys_error("LaunchConfig", unknown, known))
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, in the file's order; sections are copies."""
        return dataclasses.asdict(self)


_FIELD_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "num_machines": partial(_int_at_least, 1),
    "min_machines": lambda label, value: None if value is None else _int_at_least(1, label, value),
    "machine_rank": partial(_int_at_least, 0),
    "main_process_ip": _host,
    "main_process_port": _port,
    "num_processes": partial(_int_at_least, 1),
    "device": _device,
    "gpu_ids": _gpu_ids,
    "mixed_precision": _mixed_precision,
    "strategy": partial(_choice, STRATEGY_CHOICES),
    "deepspeed": partial(_section, DEEPSPEED_DEFAULTS, _DEEPSPEED_CHECKS),
    "fsdp": partial(_section, FSDP_DEFAULTS, _FSDP_CHECKS),
    "gradient_accumulation_steps": partial(_int_at_least, 1),
    "max_restarts": partial(_int_at_least, 0),
    "rdzv_backend": partial(_choice, RDZV_BACKENDS),
    "rdzv_timeout": partial(_int_at_least, 1),
    "collective_timeout": partial(_int_at_least, 1),
}


def _check_combinations(cfg: LaunchConfig) -> None:
    if cfg.min_machines is not None:
        _check_elastic(cfg)
    if cfg.strategy == "fsdp" and cfg.mixed_precision == "fp16":  # FSDPStrategy refuses it in every worker
        raise ValueError(_error("mixed_precision", "fp16", "not with strategy 'fsdp': sharded gradients get no fp16 "
                                "loss scaler here. Set mixed_precision: bf16 (FSDP's own mixed precision, no scaler "
                                "needed) or no, or choose strategy: ddp."))
    if cfg.machine_rank >= cfg.num_machines:
        raise ValueError(_error("machine_rank", cfg.machine_rank, f"ranks count from 0, so with "
                                f"num_machines={cfg.num_machines} it must lie in 0..{cfg.num_machines - 1}. "
                                "Fix machine_rank, or raise num_machines."))
    if cfg.strategy == "single_device" and cfg.num_processes * cfg.num_machines > 1:
        raise ValueError(_error("strategy", cfg.strategy, f"runs one process, but num_machines={cfg.num_machines} "
                                f"and num_processes={cfg.num_processes}. Use strategy 'ddp', or set both to 1."))
    for section in ("deepspeed", "fsdp"):
        if getattr(cfg, section) is not None and cfg.strategy != section:
            raise ValueError(_error(section, getattr(cfg, section), f"these settings are for strategy {section!r}, "
                                    f"but strategy={cfg.strategy!r}. Set strategy: {section}, or remove the "
                                    f"{section} section."))
    if cfg.deepspeed is not None:
        _check_deepspeed(cfg.deepspeed)
    if cfg.fsdp is not None:
        _check_fsdp(cfg.fsdp)
    _check_gpus(cfg)


def _check_elastic(cfg: LaunchConfig) -> None:
    if cfg.min_machines is None:  # a fixed number of machines
        return
    if cfg.min_machines > cfg.num_machines:
        raise ValueError(_error("min_machines", cfg.min_machines, f"the fewest machines cannot exceed the most, "
                                f"num_machines={cfg.num_machines}. Give the range as MIN:MAX, e.g. "
                                f"--num-machines {cfg.num_machines}:{cfg.min_machines}."))
    if cfg.min_machines < cfg.num_machines and cfg.rdzv_backend != "c10d":
        raise ValueError(_error("rdzv_backend", cfg.rdzv_backend, f"a range of machines ({cfg.min_machines}:"
                                f"{cfg.num_machines}) needs the elastic rendezvous, which fixed ranks cannot "
                                "give. Set rdzv_backend: c10d (--rdzv-backend c10d)."))


def _check_gpus(cfg: LaunchConfig) -> None:
    if cfg.gpu_ids == "all":
        return
    if cfg.device != "gpu":
        raise ValueError(_error("gpu_ids", cfg.gpu_ids, f"chooses GPUs, but device={cfg.device!r}. "
                                "Set device: gpu, or gpu_ids: all."))
    count = len(cfg.gpu_ids.split(","))
    if cfg.num_processes > count:
        raise ValueError(_error("gpu_ids", cfg.gpu_ids, f"lists {count} GPU(s), but num_processes="
                                f"{cfg.num_processes} and each process drives one GPU. List at least "
                                f"{cfg.num_processes} GPUs, or lower num_processes to {count}."))


# -- the file -----------------------------------------------------------------------------------
_HEADER = ("# trainer launch configuration, written by `trainer config` and read by `trainer launch`.\n"
           "# Edit it by hand or run `trainer config` again; `trainer config show` prints it.\n")

# Fields grouped and ordered as a reader thinks of them, not alphabetically.
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Machines and how they find the main one", ("num_machines", "min_machines", "machine_rank", "main_process_ip",
                                                 "main_process_port")),
    ("Processes and devices on each machine", ("num_processes", "device", "gpu_ids")),
    ("Numerics and distribution", ("mixed_precision", "strategy", "deepspeed", "fsdp")),
    ("Training loop", ("gradient_accumulation_steps",)),
    ("Launcher (torchrun): restarts and rendezvous", ("max_restarts", "rdzv_backend", "rdzv_timeout",
                                                      "collective_timeout")),
)


def config_path() -> Path:
    """Where the config file lives: ``$TRAINER_CONFIG_FILE``, else ``~/.config/trainer/default_config.yaml``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_LOCATION).expanduser()


def to_yaml(cfg: LaunchConfig) -> str:
    """The file's text: a header, then the settings in commented groups (empty sections left out)."""
    import yaml  # only where a file is written or read: `trainer launch` without one never imports it

    values = cfg.to_dict()
    blocks = [_HEADER]
    for title, names in _GROUPS:
        group = {name: values[name] for name in names if values[name] is not None}
        blocks.append(f"# {title}\n" + yaml.safe_dump(group, sort_keys=False, default_flow_style=False))
    return "\n".join(blocks)


def load_config(path: str | os.PathLike | None = None) -> LaunchConfig:
    """Read and validate the config file at ``path`` (default: ``config_path()``).

    Raises:
        FileNotFoundError: no file there.
        ValueError, TypeError: the file is not valid YAML, or a setting is wrong; the message
            names the file and the setting.
    """
    file = Path(path).expanduser() if path is not None else config_path()
    if not file.is_file():
        raise FileNotFoundError(f"No trainer config file at {file}. Create one with `trainer config` (asks a few "
                                "questions) or `trainer config --default` (writes the defaults), or point "
                                f"${ENV_VAR} at an existing file.")
    import yaml

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"Config file {file} is not valid YAML: {err}\nFix the syntax, {_RERUN}") from None
    try:
        return LaunchConfig.from_dict({} if data is None else data)
    except (TypeError, ValueError) as err:
        raise type(err)(f"Config file {file}: {in_file_words(str(err))}") from None


def save_config(cfg: LaunchConfig, path: str | os.PathLike | None = None) -> Path:
    """Write ``cfg`` as YAML to ``path`` (default: ``config_path()``) atomically; return the path.

    Parent directories are created. The text goes to a temporary file in the same directory
    which then replaces the target, so a reader never sees half a file.
    """
    if not isinstance(cfg, LaunchConfig):
        raise TypeError(f"save_config(cfg={cfg!r}): expected a LaunchConfig. Build one with "
                        "LaunchConfig(...) or LaunchConfig.from_dict(...).")
    file = Path(path).expanduser() if path is not None else config_path()
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(to_yaml(cfg))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file
