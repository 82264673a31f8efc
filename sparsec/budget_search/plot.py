"""The search's Pareto front as a picture: latency against quality, the chosen point marked.

Rules:
- every measured candidate is a dot, the front a line, the chosen one a star, the budget a
  dashed line; names label the front's points;
- matplotlib is optional (`pip install 'sparsec[plots]'`): without it `plot_front` returns
  None and the caller says so; it never draws on screen (Agg backend).

Example:
    png = plot_front(result, Path("search-pareto.png"))
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsec.budget_search.run import SearchResult

__all__ = ["plot_front"]


def plot_front(result: SearchResult, path: Path) -> Path | None:
    """Write the front of `result` to `path` (PNG); None when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    points = [m for m in result.measured if m.ok]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter([m.ms for m in points], [m.quality for m in points], color="0.6", label="measured")
    front = result.front
    axes.plot([m.ms for m in front], [m.quality for m in front], "o-", color="C0", label="front")
    for m in front:
        axes.annotate(
            m.name, (m.ms, m.quality), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    floor = result.dense_quality - abs(result.dense_quality) * result.budget
    axes.axhline(floor, linestyle="--", color="C3", label=f"budget {result.budget:.1%}")
    if result.chosen is not None:
        axes.scatter(
            [result.chosen.ms],
            [result.chosen.quality],
            marker="*",
            s=200,
            color="C1",
            zorder=3,
            label=f"chosen: {result.chosen.name}",
        )
    axes.set_xlabel("latency (ms, median, own process)")
    axes.set_ylabel("quality")
    axes.set_xscale("log")
    axes.legend(fontsize=8)
    axes.set_title("sparsec search: latency vs quality")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
