"""Results people can look at: one markdown table and one PNG per benchmark.

``write_results`` writes ``<dir>/<name>.md`` (the table the benchmark printed, with how it was
measured) and ``<dir>/<name>.png``: one horizontal bar per variant at its median ratio to the
baseline, a whisker over the range of the rounds, a dot per round, and a line at 1.0. matplotlib
(in the ``dev`` extra) is imported only here; without it the markdown is still written.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from pathlib import Path
from typing import Sequence


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
            f"{os.cpu_count()} cores, load average {load:.1f} when it finished")


def write_results(directory: str | os.PathLike, name: str, title: str, table: str,
                  bars: Sequence[tuple[str, Sequence[float]]], xlabel: str, better: str = "lower") -> list[Path]:
    """Write ``name.md`` and ``name.png`` under ``directory``; returns the paths written.

    Args:
        table: the markdown the benchmark printed (table and notes).
        bars: (label, ratio of each round) per variant, baseline included, top to bottom.
        xlabel: what the ratio is, e.g. "time per step / plain loop".
        better: "lower" or "higher", said in the chart's title.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(f"# {title}\n\n{table.rstrip()}\n\nMeasured {machine_line()}.\n\n![{title}]({name}.png)\n")
    written = [md]
    png = _plot(out / f"{name}.png", title, bars, xlabel, better)
    if png is not None:
        written.append(png)
    return written


def _plot(path: Path, title: str, bars: Sequence[tuple[str, Sequence[float]]], xlabel: str,
          better: str) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in bars]
    medians = [statistics.median(values) for _, values in bars]
    lows = [m - min(values) for m, (_, values) in zip(medians, bars)]
    highs = [max(values) - m for m, (_, values) in zip(medians, bars)]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(bars) + 1.4), dpi=110)
    ys = range(len(bars))[::-1]
    ax.barh(list(ys), medians, xerr=[lows, highs], color="#4C72B0", alpha=0.8, capsize=3,
            error_kw={"ecolor": "#333333", "lw": 1})
    for y, (_, values) in zip(ys, bars):
        ax.plot(list(values), [y] * len(values), "o", ms=3, color="#222222", alpha=0.6)
    for y, m in zip(ys, medians):
        ax.text(m, y + 0.28, f" {m:.2f}x", va="center", fontsize=8)
    ax.axvline(1.0, color="#C44E52", lw=1)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title(f"{title}\n{better} is better; bar: median, whisker: range of rounds, dots: rounds", fontsize=9)
    ax.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
