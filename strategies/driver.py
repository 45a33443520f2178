"""What the step engine drives: a strategy prepares a model and its optimizers and returns a ``Driver``.

The engine (trainer/engine/step_engine.py) owns the accumulation window and the order of a step; the
driver does each part of it the way the strategy needs it, without the engine asking which strategy it
holds:

    backward(loss)          the precision's loss scaling, then backward
    backward_by(fn, loss)   the same with the module's own backward ``fn`` (DeepSpeed refuses it)
    unscale(optimizer)      undo the loss scale so gradients can be read or clipped
    clip_norm / clip_value  clip gradients (the norm over every shard under FSDP)
    step(optimizer)         the optimizer step; returns a ``StepResult`` (stepped, or skipped on inf/nan)
    zero_grad(optimizer)
    renormalise(fix)        rescale a window's accumulated gradients to the exact item mean

``Driver`` serves every strategy whose gradients live on the parameters (one device, DDP, FSDP);
DeepSpeed's driver wraps its engine (strategies/deepspeed.py). Each method calls the precision or
torch directly, so the engine's step costs the same number of calls as before the driver existed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple

import torch

__all__ = ["Driver", "StepResult", "STEPPED", "WindowFix"]


class StepResult(NamedTuple):
    """What an optimizer step did: ``stepped`` (False: skipped, ``reason`` says why, e.g. inf/nan
    gradients under fp16 loss scaling) and what the step's closure returned, if it had one."""

    stepped: bool = True
    reason: str | None = None
    closure_result: Any = None

    @property
    def skipped(self) -> bool:
        return not self.stepped


#: the usual result, shared (a step that ran and had no closure builds nothing)
STEPPED = StepResult()
SKIPPED_INF = "inf/nan gradients under fp16 loss scaling (the scaler skipped the step and lowered its scale)"


class WindowFix(NamedTuple):
    """A closed accumulation window whose gradients are not yet the mean over its items: the
    parameters to fix, the factor (computed on demand: it may reduce over the processes), and what a
    driver that cannot rescale reports (``counted``: a step gave ``num_items``; ``items`` of ``expected``)."""

    parameters: Callable[[], list[torch.nn.Parameter]]
    factor: Callable[[], Any]
    counted: bool
    items: Any
    expected: int


class Driver:
    """Backward, unscale, clip, step and zero_grad for gradients that live on the parameters.

    Args:
        precision: the strategy's ``Precision`` (loss scaling, the fp16 scaler's step).
    """

    def __init__(self, precision: Any) -> None:
        self.precision = precision

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward(*args, **kwargs)`` with the precision's loss scaling."""
        self.precision.backward(loss, *args, **kwargs)

    def backward_by(self, backward: Callable[[torch.Tensor], Any], loss: torch.Tensor) -> None:
        """``backward(loss)`` (a module's own ``backward``) with the precision's loss scaling applied first."""
        backward(self.precision.scale_loss(loss))

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Undo loss scaling (16-mixed) on ``optimizer``'s gradients; safe to call twice in a step."""
        self.precision.unscale_gradients(optimizer)

    def clip_norm(self, parameters: Iterable[torch.nn.Parameter], max_norm: float,
                  norm_type: float = 2.0) -> torch.Tensor:
        """Clip the gradients' total norm to ``max_norm``; returns the norm before clipping."""
        return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type=norm_type)

    def clip_value(self, parameters: Iterable[torch.nn.Parameter], clip_value: float) -> None:
        torch.nn.utils.clip_grad_value_(list(parameters), clip_value)

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> StepResult:
        """The optimizer step (``closure``: re-evaluates the loss, e.g. for LBFGS)."""
        return self.precision.optimizer_step(optimizer, closure)

    def zero_grad(self, optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        optimizer.zero_grad(set_to_none=set_to_none)

    def renormalise(self, fix: WindowFix) -> None:
        """Multiply the window's accumulated gradients by ``fix.factor()`` in place."""
        grads = [p.grad for p in fix.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, fix.factor())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.precision!r})"
