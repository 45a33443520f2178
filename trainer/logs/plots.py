"""The loss curves of a run as a PNG beside its logs, drawn from the rows the loggers received."""

from __future__ import annotations

import os
from trainer.logs.console import rank_zero_info


def write_loss_png(history: list[tuple[int, dict[str, float]]], directory: str) -> str | None:
    """Plot every logged metric whose name contains "loss" against the optimizer step.

    Returns the file written, or None (with a one-line note) when there is nothing to plot or
    matplotlib is not installed.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step, row in history:
        for key, value in row.items():
            if "loss" in key and key != "epoch":
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(value)
    if not series:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        rank_zero_info("No loss plot: matplotlib is not installed (pip install matplotlib).")
        return None
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for key, (steps, values) in sorted(series.items()):
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "loss_curves.png")
    figure.savefig(path)
    plt.close(figure)
    return path
