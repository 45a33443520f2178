"""Precision: how the forward runs (autocast), how parameters are stored and how the loss is scaled.

One class covers the four settings; the strategy owns an instance. ``Precision.from_string``
is the only place a precision string becomes an object.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from .support import apply_to_tensors, did_you_mean, quoted
from .driver import SKIPPED_INF, STEPPED, StepResult

# The one table of precision names: ours -> (Accelerate's ``mixed_precision``, autocast dtype, parameter dtype).
PRECISION_TABLE: dict[str, tuple[str | None, torch.dtype | None, torch.dtype | None]] = {
    "32-true": ("no", None, None),
    "bf16-mixed": ("bf16", torch.bfloat16, None),
    "16-mixed": ("fp16", torch.float16, None),
    "bf16-true": (None, None, torch.bfloat16),  # Accelerate has no name for it
}
PRECISIONS = tuple(PRECISION_TABLE)

# Every spelling users bring (Lightning's ints and short strings, Accelerate's names) -> ours.
_ALIASES: dict[Any, str] = {
    **{name: name for name in PRECISION_TABLE},
    **{accelerate: name for name, (accelerate, _, _) in PRECISION_TABLE.items() if accelerate},
    "32": "32-true", 32: "32-true", "fp32": "32-true", "16": "16-mixed", 16: "16-mixed",
}


def precision_name(value: Any, owner: str = "Trainer(precision=...)") -> str:
    """Our name for a precision spelled any known way (``"fp16"``, ``16``, ``"bf16-mixed"``, ...)."""
    if isinstance(value, Precision):
        return value.name
    key = value.lower() if isinstance(value, str) else value
    if key not in _ALIASES:
        raise ValueError(
            f"{owner.replace('...', repr(value))}: unknown precision. Expected one of "
            f"{quoted(PRECISIONS)}.{did_you_mean(value, PRECISIONS + ('fp16', 'bf16', 'no'))}"
        )
    return _ALIASES[key]


class Precision:
    """Numerics of one training run.

    Args:
        name: one of ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ``"bf16-true"``.

    ``*-mixed`` keeps fp32 parameters and runs the forward under ``torch.autocast``;
    ``16-mixed`` adds a ``GradScaler`` so small fp16 gradients do not underflow (a step
    whose gradients overflow is skipped, as the scaler intends). ``bf16-true`` stores the
    parameters in bf16 and casts floating inputs to bf16.
    """

    def __init__(self, name: str = "32-true") -> None:
        if name not in PRECISIONS:
            raise ValueError(f"Precision({name!r}): unknown precision. Expected one of {quoted(PRECISIONS)}.")
        self.name = name
        self.mixed_precision, self.autocast_dtype, self.param_dtype = PRECISION_TABLE[name]
        self.device_type = "cpu"
        self.scaler: Any = None
        self._unscaled: set[int] = set()  # optimizers unscaled since their last step

    @classmethod
    def from_string(cls, value: Any, owner: str = "Trainer(precision=...)") -> "Precision":
        """Turn a user's precision setting into an object; ``owner`` names the call for errors."""
        if isinstance(value, Precision):
            return value
        return cls(precision_name(value, owner))

    # -- set-up -------------------------------------------------------------------------
    def setup(self, device: torch.device) -> None:
        """Bind to a device: check the combination works there and build the scaler."""
        self.device_type = device.type
        if self.name == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(
                "precision='bf16-mixed': this CUDA device does not support bfloat16. "
                "Use precision='16-mixed' (fp16 with a gradient scaler) instead."
            )
        if self.autocast_dtype is not None and not torch.amp.is_autocast_available(device.type):
            raise ValueError(
                f"precision={self.name!r}: torch.autocast does not support device type {device.type!r}. "
                "Use precision='32-true' on this device."
            )
        if self.name == "16-mixed" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(device.type)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.param_dtype is not None:
            return module.to(self.param_dtype)
        if self.name == "16-mixed":
            half = [n for n, p in module.named_parameters() if p.requires_grad and p.dtype == torch.float16]
            if half:
                raise ValueError(
                    f"precision='16-mixed' needs float32 parameters, but {half[0]!r} "
                    f"(and {len(half) - 1} more) are float16: the gradient scaler cannot unscale fp16 "
                    "gradients. Keep the model in float32 (remove `.half()`) and let autocast run "
                    "the forward in fp16."
                )
        return module

    def convert_input(self, batch: Any) -> Any:
        if self.param_dtype is None:
            return batch
        dtype = self.param_dtype
        return apply_to_tensors(batch, lambda t: t.to(dtype) if t.is_floating_point() else t)

    # -- the training step --------------------------------------------------------------
    def forward_context(self) -> ContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` times the gradient scaler's scale (16-mixed); as it is otherwise."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.scale_loss(loss).backward(*args, **kwargs)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true scale (before clipping); safe to call once per step."""
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any = None) -> StepResult:
        """Step (``closure``: re-evaluates the loss, e.g. for LBFGS; under 16-mixed it runs once first,
        as the scaler cannot step with a closure). Returns whether it stepped: under 16-mixed the scaler
        skips a step whose gradients hold inf/nan (and lowers its scale, which is how it is seen here:
        a host sync, under 16-mixed only, where the scaler's own step has just synced on the same check)."""
        scaler = self.scaler
        if scaler is None:
            if closure is None:
                optimizer.step()
                return STEPPED
            return StepResult(True, None, optimizer.step(closure))
        result = closure() if closure is not None else None
        scale = scaler.get_scale()
        scaler.step(optimizer)  # skips the step when unscale_ found inf/nan gradients
        scaler.update()
        self._unscaled.discard(id(optimizer))
        if scaler.get_scale() < scale:
            return StepResult(False, SKIPPED_INF, result)
        return STEPPED if result is None else StepResult(True, None, result)

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __repr__(self) -> str:
        return f"Precision({self.name!r})"
