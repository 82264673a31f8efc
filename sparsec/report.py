"""The compile report: what the model was, what each pass did, what came out.

Rules:
- everything in it is measured on this run (counts, timings, errors), never estimated;
- it renders as Markdown for people (`report.md`) and as plain data (`report.json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sparsec.metrics import LayerWidth

__all__ = ["ModelStats", "Report"]


@dataclass(frozen=True)
class ModelStats:
    """Size and cost of one version of the model."""

    parameters: int
    macs: int
    nodes: int
    widths: tuple[LayerWidth, ...]


@dataclass
class Report:
    """Everything one compilation measured."""

    model: str
    target: str
    backend: str
    pipeline: str
    before: ModelStats
    after: ModelStats
    # where the compile time went: trace, passes (each also in pass_times), materialize,
    # lower, numeric check; seconds, in order
    phase_times: list[tuple[str, float]] = field(default_factory=list)
    pass_times: list[tuple[str, float]] = field(default_factory=list)
    pass_stats: list[dict[str, Any]] = field(default_factory=list)
    pass_deviation: list[tuple[str, float]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    pass_summaries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    unruled_ops: dict[str, list[str]] = field(default_factory=dict)
    backend_error: float | None = None
    backend_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def _ratio(after: int, before: int) -> str:
        return f"{after / before:.3f}" if before else "-"

    def to_markdown(self) -> str:
        b, a = self.before, self.after
        lines = [
            f"# sparsec report: {self.model}",
            "",
            f"- target: `{self.target}`, backend: `{self.backend}`"
            + (f" ({self.backend_reason})" if self.backend_reason else ""),
            f"- pipeline: `{self.pipeline}`",
            "",
            "| | before | after | after/before |",
            "|---|---:|---:|---:|",
            f"| parameters | {b.parameters:,} | {a.parameters:,} | {self._ratio(a.parameters, b.parameters)} |",
            f"| MACs per sample | {b.macs:,} | {a.macs:,} | {self._ratio(a.macs, b.macs)} |",
            f"| ops | {b.nodes} | {a.nodes} | |",
            "",
        ]
        if self.backend_error is not None:
            lines += [f"Max |backend - torch| on the example inputs: {self.backend_error:.3g}", ""]
        if self.phase_times:
            total = sum(seconds for _, seconds in self.phase_times)
            phases = ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.phase_times)
            lines += [f"Compile time: {total:.2f} s ({phases})", ""]
        if self.pass_times:
            lines += ["## Passes", "", "| pass | time (s) | params after | deviation from input model |", "|---|---:|---:|---:|"]
            deviation = dict(self.pass_deviation)
            params = {s["pass"]: s["params_after"] for s in self.pass_stats}
            for name, seconds in self.pass_times:
                dev = f"{deviation[name]:.3g}" if name in deviation else "-"
                kept = f"{params[name]:,}" if name in params else "-"  # lowering passes: none
                lines.append(f"| `{name}` | {seconds:.3f} | {kept} | {dev} |")
            lines.append("")
        before_widths = {w.layer: w for w in b.widths}
        if a.widths:
            lines += ["## Layer widths", "", "| layer | op | in before → after | out before → after |", "|---|---|---:|---:|"]
            for w in a.widths:
                old = before_widths.get(w.layer, w)
                lines.append(
                    f"| {w.layer} | {w.op} | {old.in_channels} → {w.in_channels} | {old.out_channels} → {w.out_channels} |"
                )
            lines.append("")
        if self.groups:
            lines += ["## Dependency groups", "", "| group | layers | units before → after | frozen |", "|---|---|---:|---|"]
            for g in self.groups:
                lines.append(f"| {g['index']} | {g['layers']} | {g['before']} → {g['after']} | {g['frozen']} |")
            lines.append("")
        for name, summary in self.pass_summaries:
            details = {k: v for k, v in summary.items() if k != "groups"}
            if details:
                lines += [f"## What `{name.split('{')[0]}` did", ""]
                for key, value in details.items():
                    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                        lines.append(f"- {key}:")
                        lines += [f"  - {_compact(v)}" for v in value]
                    else:
                        lines.append(f"- {key}: {_compact(value)}")
                lines.append("")
        if self.unruled_ops:
            lines += ["## Ops without a channel rule (their channels were frozen)", ""]
            lines += [f"- `{op}`: {', '.join(nodes[:5])}" for op, nodes in self.unruled_ops.items()]
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)


def _compact(value: Any) -> str:
    """One line per summary entry; long lists are cut with a count of what was left out."""
    if isinstance(value, list) and len(value) > 12:
        return ", ".join(_compact(v) for v in value[:12]) + f", ... ({len(value) - 12} more)"
    if isinstance(value, list):
        return ", ".join(_compact(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} = {_compact(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
