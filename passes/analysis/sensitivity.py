"""Sensitivity: how much the model's output moves when one group alone loses channels.

Rules:
- per group and per ratio in `ratios`, the lowest-scoring `floor(ratio * prunable)` units
  (by the pipeline's "channel-importance" criterion, default L2 magnitude) are removed by
  zeroing them in every value of the group, which is what a consumer reads once they are
  gone; the graph itself is never edited;
- `metric="output-mse"`: Σ‖y - y₀‖² / Σ‖y₀‖² over the calibration batches (relative
  squared error of the outputs); `metric="loss"`: mean loss increase under
  `Calibration.loss_fn`;
- the sweep runs through `sparsec.parallel.parallel_map` on `engine` ("sequential" by
  default: a task is a few forward passes, which Ray's start-up of seconds outweighs on
  small models; "ray" or "auto" for large ones, `address` to join a cluster). Sequential,
  it is one task costing groups × ratios + 1 forward passes per batch; on Ray each group
  is a task of ratios + 1 (its own reference run); one batch in memory at a time per task;
- every task runs torch on `threads` threads (default: this process's count) and Ray
  reserves as many CPUs for it: the deviations are bit for bit the same on either engine
  (a matrix product's sums depend on the thread count); `threads=1` runs the most groups
  at once; on Ray the graph travels once through the object store as a `PortableModule`,
  with the calibration data;
- `SensitivityResult.overrides(budget)` turns the curves into per-layer ratios for
  `prune-channels{overrides=...}`: each group gets the largest tested ratio whose deviation
  stays within `budget`.

Example:
    result = am.get(Sensitivity(ratios=(0.25, 0.5, 0.75)))
    PruneChannels(overrides=result.overrides(0.05))
    am.get(Sensitivity(engine="ray", threads=1))   # the groups as Ray tasks
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.fx as fx
from pydantic import Field
from torch.utils import _pytree as pytree

from sparsec.calibration import Calibration, require_calibration
from sparsec.ir import Graph
from sparsec.ir.portable import PortableModule
from sparsec.parallel import Engine, parallel_map, resolve_engine
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


Edits = dict[str, list[tuple[int, torch.Tensor]]]


def _edits(
    deps: DependencyInfo, group: DependencyGroup, removed: np.ndarray, values: set[str]
) -> Edits:
    """Per value of the group: the (axis, channels) to zero for the removed units."""
    per_node: Edits = {}
    for name, axis in group.slots:
        index = np.nonzero(np.isin(deps.slot_units[(name, axis)], removed))[0]
        if name in values and len(index):
            per_node.setdefault(name, []).append((axis, torch.as_tensor(index)))
    return per_node


def _zeroing(edits: Edits) -> dict[str, Any]:
    """The `tap` transform that applies `edits`."""

    def zero(node_edits: list[tuple[int, torch.Tensor]]) -> Any:
        def apply(value: torch.Tensor) -> torch.Tensor:
            for axis, index in node_edits:
                value = value.index_fill(axis, index, 0.0)
            return value

        return apply

    return {name: zero(node_edits) for name, node_edits in edits.items()}


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
    engine: Engine = "sequential"
    address: str | None = None
    threads: Annotated[int, Field(ge=1)] | None = None

    def run(self, graph: Graph, am: AnalysisManager) -> SensitivityResult:
        calibration = require_calibration(am.calibration, self.name)
        if self.metric == "loss":
            calibration.require_loss(f"{self.name}{{metric=loss}}")
        deps = am.get(DependencyGroups())
        scores = am.get(am.provider("channel-importance", MagnitudeImportance()))
        values = {n.name for n in graph.nodes if n.op not in ("get_attr", "output")}
        plans: list[tuple[DependencyGroup, tuple[Edits, ...]]] = []
        for group in deps.groups:
            if group.index not in scores or len(group.prunable_units) == 0:
                continue
            candidates = group.prunable_units
            order = np.argsort(
                scores[group.index][np.searchsorted(group.units, candidates)], kind="stable"
            )
            removed = [candidates[order[: math.floor(r * len(candidates))]] for r in self.ratios]
            plans.append((group, tuple(_edits(deps, group, u, values) for u in removed)))
        on_ray = resolve_engine(self.engine) == "ray"
        threads = self.threads or torch.get_num_threads()
        sweep = _Sweep(
            PortableModule.of(graph.module) if on_ray else graph.module,
            calibration,
            self.metric,
        )
        # Ray: a task per group; sequential: one task, so each batch's reference runs once
        tasks = [(edits,) for _, edits in plans] if on_ray else [tuple(e for _, e in plans)]
        per_group = [f"group {g.index} ({', '.join(g.layers)})" for g, _ in plans]
        rows = parallel_map(
            _deviations,
            tasks,
            shared=sweep,
            engine="ray" if on_ray else "sequential",
            address=self.address,
            threads=threads,
            names=per_group if on_ray else [f"the sweep of {len(plans)} groups"],
        )
        flat = [row for task_rows in rows for row in task_rows]
        deviation = {group.index: row for (group, _), row in zip(plans, flat, strict=True)}
        layers = {g.index: tuple(g.layers) for g in deps.groups if g.index in deviation}
        return SensitivityResult(tuple(self.ratios), deviation, layers)


@dataclass(frozen=True)
class _Sweep:
    """What every group's task reads: the module (portable for Ray), the data, the metric."""

    module: fx.GraphModule | PortableModule
    calibration: Calibration
    metric: str


def _deviations(sweep: _Sweep, groups: tuple[tuple[Edits, ...], ...]) -> list[np.ndarray]:
    """Each group's deviation at each ratio: per batch, one reference run for all the
    groups and one run per group and ratio."""
    module = sweep.module.module() if isinstance(sweep.module, PortableModule) else sweep.module
    loss_fn = sweep.calibration.loss_fn if sweep.metric == "loss" else None
    transforms = [[_zeroing(edits) for edits in per_ratio] for per_ratio in groups]
    error = [[0.0] * len(per_ratio) for per_ratio in groups]
    norm, batches = 0.0, 0
    process = module.graph.process_outputs
    for args, kwargs, batch in sweep.calibration.with_batches():
        reference = tap(module, args, kwargs)
        y0 = _flat(reference)
        norm += float(y0.square().sum())
        base = float(loss_fn(process(reference), batch)) if loss_fn else 0.0
        batches += 1
        for group_error, group_transforms in zip(error, transforms, strict=True):
            for i, transform in enumerate(group_transforms):
                out = tap(module, args, kwargs, transform=transform)
                if loss_fn is None:
                    group_error[i] += float((_flat(out) - y0).square().sum())
                else:
                    group_error[i] += float(loss_fn(process(out), batch)) - base
    scale = max(norm, 1e-30) if loss_fn is None else max(batches, 1)
    return [np.array([e / scale for e in group_error]) for group_error in error]
