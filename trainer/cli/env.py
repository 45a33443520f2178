"""``trainer env``: what a bug report needs: versions, devices, the config file, the environment.

Optional integrations are looked up in the installed package metadata, never imported: importing
deepspeed or wandb is slow and can fail, and a report must work on a broken install.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from trainer.cli import config_file

HELP = "print versions, devices, the config file and the environment: what a bug report needs"

# Integration -> the distributions that provide it, first match wins.
INTEGRATIONS: dict[str, tuple[str, ...]] = {
    "deepspeed": ("deepspeed",),
    "tensorboard": ("tensorboard",),
    "wandb": ("wandb",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "torchmetrics": ("torchmetrics",),
    "lightning": ("lightning", "pytorch-lightning"),
    "accelerate": ("accelerate",),
}
ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES",
            config_file.ENV_VAR)


def installed_version(distributions: tuple[str, ...]) -> str | None:
    """The version of the first installed distribution among ``distributions``, or None."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _torch_info() -> dict[str, Any]:
    import torch

    cuda_ok = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda_ok else 0
    mps = getattr(torch.backends, "mps", None)
    if torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    else:
        build = f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU"
    dist = torch.distributed
    return {
        "version": torch.__version__, "build": build, "cuda_available": cuda_ok, "cuda_device_count": count,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(count)],
        "mps_available": bool(mps is not None and mps.is_available()),
        "distributed_backends": [name for name, ok in (
            ("gloo", dist.is_available() and dist.is_gloo_available()),
            ("nccl", dist.is_available() and dist.is_nccl_available())) if ok],
    }


def _config_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path), "exists": path.is_file(), "contents": None, "error": None}
    if not info["exists"]:
        return info
    import yaml  # only when there is a file to show

    try:
        info["contents"] = yaml.safe_load(path.read_text(encoding="utf-8"))
        config_file.load_config(path)
    except (OSError, TypeError, ValueError, yaml.YAMLError) as err:
        info["error"] = str(err)
    return info


def _environment() -> dict[str, Any]:
    values: dict[str, Any] = {name: os.environ.get(name) for name in ENV_VARS}
    values["SLURM_* count"] = sum(1 for name in os.environ if name.startswith("SLURM_"))
    return values


def collect(path: Path) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data; ``path`` is the config file."""
    from trainer import __version__

    return {
        "trainer": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "torch": _torch_info(),
        "cpu_count": os.cpu_count(),
        "integrations": {name: installed_version(dists) for name, dists in INTEGRATIONS.items()},
        "config_file": _config_info(path),
        "environment": _environment(),
    }


_WIDTH = 24  # label column of the text report


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _config_lines(cfg: dict[str, Any]) -> list[str]:
    lines = [_row("Config file", cfg["path"] if cfg["exists"] else f"{cfg['path']} (none)")]
    if cfg["contents"] is not None:
        import yaml

        dumped = yaml.safe_dump(cfg["contents"], sort_keys=False, default_flow_style=False)
        lines += [f"  {line}" for line in dumped.splitlines()]
    if cfg["error"]:
        lines.append(f"  invalid: {cfg['error']}")
    return lines


def _row(label: str, value: Any, indent: int = 0) -> str:
    return f"{' ' * indent}{label + ':':<{_WIDTH - indent}}{value}"


def render(info: dict[str, Any]) -> str:
    """The human-readable report."""
    t = info["torch"]
    devices = f" ({', '.join(t['cuda_devices'])})" if t["cuda_devices"] else ""
    lines = [
        "Copy and paste this into your bug report:", "",
        _row("trainer version", info["trainer"]),
        _row("Python", f"{info['python']} ({info['python_executable']})"),
        _row("Platform", info["platform"]),
        _row("torch", f"{t['version']} ({t['build']} build)"),
        _row("CUDA available", f"{_yes(t['cuda_available'])}, {t['cuda_device_count']} device(s){devices}"),
        _row("MPS available", _yes(t["mps_available"])),
        _row("Distributed backends", ", ".join(t["distributed_backends"]) or "none"),
        _row("CPUs", info["cpu_count"]),
        "Integrations:",
        *(_row(name, version or "not installed", 2) for name, version in info["integrations"].items()),
        *_config_lines(info["config_file"]),
        "Environment variables:",
        *(_row(name, "unset" if value is None else value, 2) for name, value in info["environment"].items()),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``trainer env [--json] [--config-file PATH]``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--config-file", "--config_file", metavar="PATH",
                        help=f"config file to report (default: ${config_file.ENV_VAR}, else "
                        f"{config_file.DEFAULT_LOCATION})")


def run(args: argparse.Namespace) -> int:
    path = Path(args.config_file).expanduser() if args.config_file else config_file.config_path()
    info = collect(path)
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0
