"""Sensitivity: how much the model's output moves when one group alone loses channels.

Rules:
- per group and per ratio in `ratios`, the lowest-scoring `floor(ratio * prunable)` units
  (by the pipeline's "channel-importance" criterion, default L2 magnitude) are removed by
  zeroing them in every value of the group, which is what a consumer reads once they are
  gone; the graph itself is never edited;
- `metric="output-mse"`: Σ‖y - y₀‖² / Σ‖y₀‖² over the calibration batches (relative
  squared error of the outputs); `metric="loss"`: mean loss increase under
  `Calibration.loss_fn`;
- one batch is in memory at a time; the cost is groups × ratios forward passes per batch;
- `SensitivityResult.overrides(budget)` turns the curves into per-layer ratios for
  `prune-channels{overrides=...}`: each group gets the largest tested ratio whose deviation
  stays within `budget`.

Example:
    result = am.get(Sensitivity(ratios=(0.25, 0.5, 0.75)))
    PruneChannels(overrides=result.overrides(0.05))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils import _pytree as pytree

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._streaming import tap
from sparsec.passes.analysis.dependency_groups import (
    DependencyGroup,
    DependencyGroups,
    DependencyInfo,
)
from sparsec.passes.analysis.magnitude_importance import MagnitudeImportance
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["Sensitivity", "SensitivityResult"]

Ratio = Annotated[float, Field(gt=0.0, lt=1.0)]


@dataclass(frozen=True)
class SensitivityResult:
    """Deviation per group (rows aligned with `ratios`) and each group's producing layers."""

    ratios: tuple[float, ...]
    deviation: dict[int, np.ndarray]
    layers: dict[int, tuple[str, ...]]

    def ratio_within(self, budget: float) -> dict[int, float]:
        """Per group: the largest tested ratio whose deviation is at most `budget` (else 0)."""
        return {
            index: max([0.0, *(r for r, d in zip(self.ratios, dev, strict=True) if d <= budget)])
            for index, dev in self.deviation.items()
        }

    def overrides(self, budget: float) -> tuple[tuple[str, float], ...]:
        """`prune-channels` overrides: each group's producing layers at its safe ratio."""
        return tuple(
            (layer, ratio)
            for index, ratio in self.ratio_within(budget).items()
            for layer in self.layers[index]
        )

    def rows(self) -> list[dict[str, object]]:
        """One row per group for reports: layers and deviation at each ratio."""
        return [
            {
                "layers": ", ".join(self.layers[i]),
                **{f"{r:g}": float(d) for r, d in zip(self.ratios, dev, strict=True)},
            }
            for i, dev in self.deviation.items()
        ]


def _masks(
    graph: Graph, deps: DependencyInfo, group: DependencyGroup, removed: np.ndarray
) -> dict[str, Any]:
    """Per value of the group: a function that zeroes the removed units' channels."""
    values = {n.name for n in graph.nodes if n.op not in ("get_attr", "output")}
    per_node: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, axis in group.slots:
        index = np.nonzero(np.isin(deps.slot_units[(name, axis)], removed))[0]
        if name in values and len(index):
            per_node.setdefault(name, []).append((axis, torch.as_tensor(index)))

    def zero(edits: list[tuple[int, torch.Tensor]]) -> Any:
        def apply(value: torch.Tensor) -> torch.Tensor:
            for axis, index in edits:
                value = value.index_fill(axis, index, 0.0)
            return value

        return apply

    return {name: zero(edits) for name, edits in per_node.items()}


def _flat(outputs: Any) -> torch.Tensor:
    leaves = [
        t.double().flatten() for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)
    ]
    return torch.cat(leaves) if leaves else torch.zeros(0, dtype=torch.float64)


@register
@pass_dataclass
class Sensitivity(Analysis):
    """Measure output deviation when each group alone is pruned (see module docstring)."""

    name: ClassVar[str] = "sensitivity"
    ratios: tuple[Ratio, ...] = (0.25, 0.5, 0.75)
    metric: Literal["output-mse", "loss"] = "output-mse"

    def run(self, graph: Graph, am: AnalysisManager) -> SensitivityResult:
        calibration = require_calibration(am.calibration, self.name)
        loss_fn = (
            calibration.require_loss(f"{self.name}{{metric=loss}}")
            if self.metric == "loss"
            else None
        )
        deps = am.get(DependencyGroups())
        scores = am.get(am.provider("channel-importance", MagnitudeImportance()))
        plans: dict[tuple[int, float], dict[str, Any]] = {}
        for group in deps.groups:
            if group.index not in scores or len(group.prunable_units) == 0:
                continue
            candidates = group.prunable_units
            order = np.argsort(
                scores[group.index][np.searchsorted(group.units, candidates)], kind="stable"
            )
            for ratio in self.ratios:
                removed = candidates[order[: math.floor(ratio * len(candidates))]]
                plans[(group.index, ratio)] = _masks(graph, deps, group, removed)
        error = {key: 0.0 for key in plans}
        norm, batches = 0.0, 0
        process = graph.module.graph.process_outputs
        for args, kwargs, batch in calibration.with_batches():
            reference = tap(graph.module, args, kwargs)
            y0 = _flat(reference)
            norm += float(y0.square().sum())
            base = float(loss_fn(process(reference), batch)) if loss_fn else 0.0
            batches += 1
            for key, transform in plans.items():
                out = tap(graph.module, args, kwargs, transform=transform)
                if loss_fn is None:
                    error[key] += float((_flat(out) - y0).square().sum())
                else:
                    error[key] += float(loss_fn(process(out), batch)) - base
        scale = max(norm, 1e-30) if loss_fn is None else max(batches, 1)
        deviation: dict[int, np.ndarray] = {}
        for (index, _), _value in plans.items():
            deviation[index] = np.array([error[(index, r)] / scale for r in self.ratios])
        layers = {g.index: tuple(g.layers) for g in deps.groups if g.index in deviation}
        return SensitivityResult(tuple(self.ratios), deviation, layers)
