"""The one place where user settings (strings, ints) become a ``Strategy`` object.

``STRATEGIES`` maps each name to a factory taking the resolved device kind, device list and
precision; every call builds a new strategy (or raises), none is changed after construction.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .support import did_you_mean, quoted, rank_zero_info
from .precision import Precision
from .strategy import SingleDeviceStrategy, Strategy

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def _single_device(kind: str, indices: list[int], precision: Precision) -> Strategy:
    if len(indices) > 1:
        raise ValueError(
            f"strategy='single_device' trains on one device, but {len(indices)} devices were asked for. "
            "Pass devices=1, or strategy='ddp' to train on several."
        )
    device = torch.device(kind, indices[0]) if kind == "cuda" else torch.device(kind)
    return SingleDeviceStrategy(device, precision=precision)


def _ddp(kind: str, indices: list[int], precision: Precision) -> Strategy:
    from .ddp import DDPStrategy

    if kind == "mps":
        raise ValueError("strategy='ddp' does not run on MPS (Apple GPUs have no multi-process backend). "
                         "Use accelerator='cpu' for several processes, or one MPS device.")
    return DDPStrategy(device_kind=kind, precision=precision, requested_processes=len(indices))


def _ddp_unused(find_unused_parameters: bool) -> Callable[..., Strategy]:
    """Lightning's ``ddp_find_unused_parameters_true`` / ``_false``: DDP with that setting."""
    def build(kind: str, indices: list[int], precision: Precision) -> Strategy:
        from .ddp import DDPStrategy

        _ddp(kind, indices, precision)  # the same checks
        return DDPStrategy(device_kind=kind, precision=precision, requested_processes=len(indices),
                           find_unused_parameters=find_unused_parameters)
    return build


def _ddp_in_process(name: str) -> Callable[..., Strategy]:
    """Lightning's ``ddp_spawn`` / ``ddp_notebook`` / ``ddp_fork``: DDP whose ranks, when no launcher started
    them, start from inside the calling interpreter (fork, or spawn for ``ddp_spawn``) and hand their results
    back to it (trainer/engine/spawn.py); under a launcher (the ranks already run) they are plain DDP."""
    def build(kind: str, indices: list[int], precision: Precision) -> Strategy:
        from .ddp import DDPStrategy

        if kind == "cuda" and name != "ddp_spawn":
            raise ValueError(f"Trainer(strategy={name!r}, accelerator='cuda'): a forked process cannot use CUDA once "
                             "the parent has. Use strategy='ddp_spawn', or strategy='ddp' in a script.")
        _ddp(kind, indices, precision)  # the same checks
        return DDPStrategy(device_kind=kind, precision=precision, requested_processes=len(indices),
                           start_method="spawn" if name == "ddp_spawn" else "fork")
    return build


def _fsdp(kind: str, indices: list[int], precision: Precision, options: dict | None = None) -> Strategy:
    from .fsdp import FSDPStrategy

    if kind == "mps":
        raise ValueError("strategy='fsdp' does not run on MPS. Use accelerator='cpu' or CUDA devices.")
    if options:
        return FSDPStrategy.from_options(options, device_kind=kind, precision=precision,
                                         requested_processes=len(indices))
    return FSDPStrategy(device_kind=kind, precision=precision, requested_processes=len(indices))


def _deepspeed(stage: int, offload: bool = False) -> Callable[..., Strategy]:
    def build(kind: str, indices: list[int], precision: Precision, options: dict | None = None) -> Strategy:
        from .deepspeed import DeepSpeedStrategy

        if kind == "mps":
            raise ValueError("DeepSpeed does not run on MPS. Use accelerator='cpu' or CUDA devices.")
        options = options or {}
        chosen = int(options.get("zero_stage", stage))
        return DeepSpeedStrategy(
            zero_stage=chosen, device_kind=kind, precision=precision, requested_processes=len(indices),
            offload_optimizer=offload or options.get("offload_optimizer_device") == "cpu",
            offload_parameters=(offload and chosen == 3) or options.get("offload_param_device") == "cpu")
    return build


def _auto(kind: str, indices: list[int], precision: Precision) -> Strategy:
    from .environment import detect_environment

    if len(indices) > 1 or detect_environment().is_distributed:
        return _ddp(kind, indices, precision)
    return _single_device(kind, indices, precision)


STRATEGIES: dict[str, Callable[[str, list[int], Precision], Strategy]] = {
    "auto": _auto,
    "single_device": _single_device,
    "ddp": _ddp,
    "ddp_spawn": _ddp_in_process("ddp_spawn"),
    "ddp_find_unused_parameters_true": _ddp_unused(True),
    "ddp_find_unused_parameters_false": _ddp_unused(False),
    "ddp_notebook": _ddp_in_process("ddp_notebook"),
    "ddp_fork": _ddp_in_process("ddp_fork"),
    "fsdp": _fsdp,
    "deepspeed": _deepspeed(2),
    "deepspeed_stage_1": _deepspeed(1),
    "deepspeed_stage_2": _deepspeed(2),
    "deepspeed_stage_2_offload": _deepspeed(2, offload=True),
    "deepspeed_stage_3": _deepspeed(3),
    "deepspeed_stage_3_offload": _deepspeed(3, offload=True),
}


def detect_device_kind() -> str:
    """cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _device_kind(accelerator: str) -> str:
    if not isinstance(accelerator, str) or accelerator.lower() not in ACCELERATORS:
        raise ValueError(
            f"Trainer(accelerator={accelerator!r}): unknown accelerator. Expected one of "
            f"{quoted(ACCELERATORS)}.{did_you_mean(accelerator, ACCELERATORS)}"
        )
    kind = accelerator.lower()
    kind = "cuda" if kind == "gpu" else kind
    if kind == "auto":
        return detect_device_kind()
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Trainer(accelerator={accelerator!r}): no CUDA device is available on this machine "
            "(torch.cuda.is_available() is False). Use accelerator='auto' or 'cpu'."
        )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"Trainer(accelerator={accelerator!r}): MPS is not available here. Use 'auto' or 'cpu'.")
    return kind


def _device_indices(devices: Any, kind: str) -> list[int]:
    available = torch.cuda.device_count() if kind == "cuda" else 1
    if devices == "auto" or devices is None:
        return [0]
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, bool) or not isinstance(devices, (int, list, tuple)):
        raise ValueError(
            f"Trainer(devices={devices!r}): expected 'auto', a positive int (how many devices), "
            "or a list of device indices such as [0, 1]."
        )
    if isinstance(devices, int):
        if devices == -1:
            devices = available
        if devices < 1:
            raise ValueError(f"Trainer(devices={devices}): expected at least 1 device, or -1 for all of them.")
        indices = list(range(devices))
    else:
        indices = [int(i) for i in devices]
        if not indices:
            raise ValueError("Trainer(devices=[]): the list of device indices is empty. Pass e.g. devices=[0].")
    if kind == "cuda" and max(indices) >= available:
        raise ValueError(
            f"Trainer(devices={devices!r}): this machine has {available} CUDA device(s); "
            f"index {max(indices)} does not exist."
        )
    return indices


def default_precision(device_kind: str, bf16_supported: bool = False) -> tuple[str, str]:
    """The precision for ``Trainer(precision=None)`` on this kind of device, and why: mixed
    precision whenever a GPU is there (bf16 where it is supported, else fp16 with a loss scaler),
    full fp32 on CPU and MPS (where autocast is slower than fp32 for most models)."""
    if device_kind == "cuda":
        if bf16_supported:
            return "bf16-mixed", "a CUDA device that supports bf16"
        return "16-mixed", "a CUDA device without bf16 support"
    return "32-true", f"{device_kind.upper()}, no GPU"


def resolve_strategy(strategy: Any = "auto", accelerator: str = "auto", devices: Any = "auto",
                     precision: Any = None, options: dict | None = None, auto_precision: bool = False) -> Strategy:
    """Build the ``Strategy`` for these settings, validating each before anything runs.

    Args:
        strategy: a name ("auto", "ddp", "fsdp", "deepspeed_stage_2", ...) or a ``Strategy`` object.
        accelerator: "auto", "cpu", "cuda"/"gpu" or "mps".
        devices: "auto", a number of devices or a list of indices.
        precision: a precision name or None (see below).
        options: the config file's section for the strategy (e.g. its ``fsdp`` settings).
        auto_precision: pick the device's default precision when none is given (the Trainer).

    ``precision=None`` means "not given": a Strategy object keeps its own precision, a
    strategy string gets "32-true", or with ``auto_precision`` (the Trainer) the device's
    ``default_precision``, said in one rank-zero line. A Strategy object is never changed: with a
    different precision a copy is built and checked as its constructor checks (``Strategy.with_precision``).
    """
    if precision is None and auto_precision and not isinstance(strategy, Strategy):
        kind = _device_kind(accelerator)
        bf16 = kind == "cuda" and torch.cuda.is_bf16_supported()
        precision, why = default_precision(kind, bf16)
        rank_zero_info(f"Using precision={precision!r} ({why}; pass Trainer(precision=...) to choose).")
    if isinstance(strategy, Strategy):
        return strategy if precision is None else strategy.with_precision(precision)
    prec = Precision.from_string("32-true" if precision is None else precision)
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise ValueError(
            f"Trainer(strategy={strategy!r}): unknown strategy. Expected a Strategy object or one of "
            f"{quoted(STRATEGIES)}.{did_you_mean(strategy, STRATEGIES)}"
        )
    kind = _device_kind(accelerator)
    factory = STRATEGIES[strategy.lower()]
    if options and strategy.lower() in ("fsdp", "deepspeed"):  # the config file's section for this strategy
        return factory(kind, _device_indices(devices, kind), prec, options)  # type: ignore[call-arg]
    return factory(kind, _device_indices(devices, kind), prec)

