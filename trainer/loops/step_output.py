"""What a ``training_step`` returns, read by the fit loop: the loss to backpropagate (a one-element
tensor connected to the parameters, or a dict with ``"loss"`` and optionally ``"num_items"``, or None
to skip the batch), refused with an error naming the batch otherwise; and what ``on_train_batch_end``
receives in its place (the output with the loss detached, as in Lightning)."""

from __future__ import annotations

from typing import Any

import torch


def batch_end_outputs(output: Any) -> Any:
    """What ``on_train_batch_end`` receives, as in Lightning: ``{"loss": loss, **other keys}`` with the
    loss detached -- but the loss as training_step returned it, not divided by the accumulation (in
    Lightning it is; its issue #18464)."""
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return {**output, "loss": output["loss"].detach()}
    return output


def unpack_step_output(output: Any, state: Any, batch_idx: int) -> tuple[torch.Tensor | None, Any]:
    """training_step may return a loss tensor, a dict with "loss" (and "num_items"), or None."""
    if isinstance(output, torch.Tensor):
        loss, num_items = output, None
    elif isinstance(output, dict) and "loss" in output:
        loss, num_items = output["loss"], output.get("num_items")
    elif output is None:
        return None, None
    else:
        shown = f"a dict with keys {sorted(output)}" if isinstance(output, dict) else f"{type(output).__name__}"
        raise TypeError(f"training_step returned {shown} at batch_idx {batch_idx} (global_step {state.global_step}). "
                        "Expected a loss tensor, a dict with a 'loss' key (and optionally 'num_items'), "
                        "or None to skip the batch.")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"training_step's loss at batch_idx {batch_idx} must be a one-element tensor, got "
                        f"{type(loss).__name__}{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}.")
    if not loss.requires_grad:
        raise RuntimeError(f"training_step's loss at batch_idx {batch_idx} does not require grad: it is not "
                           "connected to any trainable parameter (was it computed under torch.no_grad() or "
                           "from detached tensors?).")
    return loss, num_items
