"""Pictures for the compile report: per-layer widths and sparsity, before and after.

Rules:
- `write_report_plots(report, directory)` reads the report's plain data (`Report.to_dict()`)
  and writes PNGs beside `report.md`; it returns their file names, and the artifact links
  them from `report.md`;
- `widths.png`: each weight layer's output channels before (light) and after (dark), drawn
  only when pruning changed a width; `sparsity.png`: each sparsified layer's share of zero
  weights, drawn only when a `sparsify` pass ran;
- a report without these entries (one written by hand) gets no pictures;
- matplotlib is optional (`pip install 'sparsec[plots]'`): without it nothing is drawn and
  `missing_reason()` says why; it never opens a window (Agg backend).

Example:
    names = write_report_plots(compiled.report.to_dict(), Path("artifacts/model"))
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

__all__ = ["missing_reason", "write_report_plots"]

WIDTHS_FILE = "widths.png"
SPARSITY_FILE = "sparsity.png"
_MAX_LAYERS = 60  # more bars than this are unreadable; the first ones are drawn, the title says so


def missing_reason() -> str | None:
    """Why no pictures can be drawn here, or None when they can."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install 'sparsec[plots]')"
    return None


def _bars(
    labels: list[str],
    series: list[tuple[str, list[float], str]],
    xlabel: str,
    title: str,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = labels[:_MAX_LAYERS]
    height = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.28 * len(shown)))
    for index, (name, values, color) in enumerate(series):
        positions = [i + index * height for i in range(len(shown))]
        axes.barh(positions, values[: len(shown)], height=height, color=color, label=name)
    axes.set_yticks([i + height * (len(series) - 1) / 2 for i in range(len(shown))])
    axes.set_yticklabels(shown, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    suffix = f" (first {_MAX_LAYERS} of {len(labels)} layers)" if len(labels) > _MAX_LAYERS else ""
    axes.set_title(title + suffix, fontsize=10)
    if len(series) > 1:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report_plots(report: dict[str, Any], directory: Path) -> list[str]:
    """Draw the report's pictures into `directory`; the names of the files written."""
    if missing_reason() is not None:
        return []
    written = []
    before = {w["layer"]: w for w in report.get("before", {}).get("widths", [])}
    after = report.get("after", {}).get("widths", [])
    if any(before.get(w["layer"], w)["out_channels"] != w["out_channels"] for w in after):
        layers = [w["layer"] for w in after]
        _bars(
            layers,
            [
                ("before", [before.get(w["layer"], w)["out_channels"] for w in after], "#b8c9e0"),
                ("after", [w["out_channels"] for w in after], "#2f5d9a"),
            ],
            "output channels",
            "Layer widths before and after pruning",
            directory / WIDTHS_FILE,
        )
        written.append(WIDTHS_FILE)
    rows = [
        row
        for name, summary in report.get("pass_summaries", [])
        if name.startswith("sparsify")
        for row in summary.get("layers", [])
        if "sparsity" in row
    ]
    if rows:
        _bars(
            [row["layer"] for row in rows],
            [("zero weights", [row["sparsity"] for row in rows], "#2f5d9a")],
            "share of zero weights",
            "Per-layer sparsity",
            directory / SPARSITY_FILE,
        )
        written.append(SPARSITY_FILE)
    return written
