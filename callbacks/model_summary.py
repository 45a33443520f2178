"""``ModelSummary``: the table of layers and parameter counts printed when fit starts (rank zero)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Callback
from trainer.strategies.support import rank_zero_info
from .view import TrainerView


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # DeepSpeed ZeRO-3 keeps only a partition locally


def _bytes(p: torch.Tensor) -> int:
    return _numel(p) * p.element_size()


def human_count(n: int) -> str:
    """1234 -> '1.2 K', 5_300_000 -> '5.3 M' (as Lightning prints parameter counts)."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


class ModelSummary(Callback):
    """Print the module's layers up to ``max_depth`` (1: its direct children) with their types,
    parameter counts and train/eval mode, then trainable / non-trainable / total parameters and
    their size in MB. ``Trainer(enable_model_summary=False)`` turns the default one off.

    Args:
        max_depth: how deep to list submodules (-1: all of them; 0: only the totals).

    Example:
        >>> Trainer(callbacks=[ModelSummary(max_depth=2)])  # doctest: +SKIP
    """

    def __init__(self, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}): expected an int >= 0, or -1 for every layer.")
        self.max_depth = max_depth

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        if trainer.is_global_zero:
            rank_zero_info(self.summarize(module))

    def rows(self, module: torch.nn.Module) -> list[tuple[str, str, int, str]]:
        """(name, type, parameters, mode) of each submodule down to ``max_depth``."""
        out = []
        for name, sub in module.named_modules():
            depth = name.count(".") + 1 if name else 0
            if depth == 0 or (self.max_depth != -1 and depth > self.max_depth):
                continue
            count = sum(_numel(p) for p in sub.parameters())
            out.append((name, type(sub).__name__, count, "train" if sub.training else "eval"))
        return out

    def summarize(self, module: torch.nn.Module) -> str:
        params = list(module.parameters())
        trainable = sum(_numel(p) for p in params if p.requires_grad)
        total = sum(_numel(p) for p in params)
        size_mb = sum(_bytes(p) for p in params) / 1e6
        rows = self.rows(module)
        table = [("", "Name", "Type", "Params", "Mode")]
        table += [(str(i), name, kind, human_count(count), mode) for i, (name, kind, count, mode) in enumerate(rows)]
        widths = [max(len(r[c]) for r in table) for c in range(5)]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
        rule = "-" * max(len(line) for line in lines)
        lines.insert(1, rule)
        if rows:
            lines.append(rule)
        else:
            lines = [rule]
        own = total - sum(count for name, _, count, _ in rows if "." not in name)
        if rows and own:
            lines.append(f"{human_count(own):<10} Params held by {type(module).__name__} itself (not in a layer above)")
        lines += [f"{human_count(trainable):<10} Trainable params",
                  f"{human_count(total - trainable):<10} Non-trainable params",
                  f"{human_count(total):<10} Total params",
                  f"{size_mb:<10.3f} Total estimated model params size (MB)"]
        return "\n".join(lines)
