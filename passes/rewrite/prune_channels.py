"""Structured channel pruning: remove the lowest-scoring units of the dependency groups.

Rules:
- `target` says what `ratio` is a fraction of: "channels" (prunable units), "params" or
  "macs" of the whole model; params and MACs targets are met by bisection on a size estimate
  that counts without rewriting, then measured on the pruned graph; the summary reports
  requested, estimated and achieved ratios, and says why when they differ by more than 2%;
- `allocation="local"` removes the same fraction of every group; `"global"` ranks the units
  of all groups together (use normalised scores or `lamp-importance` so groups compare);
- per group: `min_channels` stay and the kept count is a multiple of `round_to`; where the
  pass chooses the amount per group (global allocation, params/MACs targets) at most
  `max_ratio` of the group's prunable units go; `overrides` fix the ratio of the groups
  whose *producing* layer or parameter matches a glob (`[[c1, 0.2]]`: c1 keeps 80% of its
  outputs); a group any of whose parameters matches `ignore` is left whole (so ignoring
  `fc.*` also keeps the channels fc reads); frozen units stay;
- scores come from the pipeline's chosen "channel-importance" analysis (default: L2
  magnitude); a group the criterion does not score is left whole and listed as such;
- `reconstruct=true` refits, by ridge least squares on calibration data, every conv/linear
  layer that reads removed channels so it reproduces the unpruned layer's output
  (passes/rewrite/_reconstruct.py); the summary lists the error per layer.

Example:
    pipeline(taylor-importance{normalize=mean},
             prune-channels{ratio=0.5,target=macs,allocation=global,round_to=8})
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
import torch.fx as fx
from pydantic import Field

from sparsec.calibration import Calibration, require_calibration
from sparsec.ir import Graph
from sparsec.metrics import count_macs
from sparsec.passes.analysis._streaming import consumer_inputs, layer_kind
from sparsec.passes.analysis.dependency_groups import (
    DependencyGroup,
    DependencyGroups,
    DependencyInfo,
)
from sparsec.passes.analysis.magnitude_importance import MagnitudeImportance
from sparsec.passes.rewrite._allocation import (
    Allocation,
    GroupLimits,
    SizeEstimate,
    TargetKind,
    bisect_level,
    limits_for,
    plan_removal,
)
from sparsec.passes.rewrite._reconstruct import LayerFit, refit_layer, refusal
from sparsec.passes.rewrite.shrink import remove_units
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["PruneChannels", "PruneChannelsSummary"]

Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]
_TOLERANCE = 0.02


@dataclass(frozen=True, kw_only=True)
class PruneChannelsSummary(PassSummary):
    """What `prune-channels` did: a row per dependency group (units before and after, why it
    was frozen); the target's requested, estimated and achieved ratios (with a note when
    they differ); with `reconstruct=true` and units removed, the refit error per layer."""

    groups: list[dict[str, object]]
    target: dict[str, Any]
    reconstruction: list[dict[str, object]] | None = None


@register
@pass_dataclass
class PruneChannels(RewritePass):
    """Remove the lowest-importance units so the model loses `ratio` of `target`."""

    name: ClassVar[str] = "prune-channels"
    ratio: Ratio = 0.5
    target: TargetKind = "channels"
    allocation: Allocation = "local"
    max_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    min_channels: Annotated[int, Field(ge=1)] = 1
    round_to: Annotated[int, Field(ge=1)] = 1
    overrides: tuple[tuple[str, Ratio], ...] = ()
    ignore: tuple[str, ...] = ()
    reconstruct: bool = False
    ridge: Annotated[float, Field(ge=0.0)] = 1e-3

    def _matches(self, group: DependencyGroup, pattern: str) -> bool:
        return any(
            fnmatch.fnmatch(p.target, pattern) or fnmatch.fnmatch(p.layer, pattern)
            for p in group.params
        )

    def _ignored(self, group: DependencyGroup) -> bool:
        return any(self._matches(group, pattern) for pattern in self.ignore)

    def _override(self, group: DependencyGroup) -> float | None:
        producers = [p for p in group.params if p.role == "producer"]
        return next(
            (
                ratio
                for pattern, ratio in self.overrides
                for p in producers
                if fnmatch.fnmatch(p.layer, pattern) or fnmatch.fnmatch(p.target, pattern)
            ),
            None,
        )

    def limits(self, group: DependencyGroup, scores: np.ndarray) -> GroupLimits:
        """What this pass may remove from `group`, given the criterion's scores."""
        fixed = self._override(group)
        if self.allocation == "local" and self.target == "channels" and fixed is None:
            fixed = self.ratio
        return limits_for(group, scores, self.max_ratio, self.min_channels, self.round_to, fixed)

    def choose(self, group: DependencyGroup, scores: np.ndarray) -> np.ndarray:
        """The units of `group` a local channel-ratio prune removes, lowest score first."""
        if self._ignored(group):
            return np.zeros(0, dtype=np.int64)
        lim = self.limits(group, scores)
        return np.sort(lim.ranked[: lim.count(lim.most)])

    def _plan(
        self, graph: Graph, deps: DependencyInfo, scores: dict[int, np.ndarray]
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        pruned = [g for g in deps.groups if not self._ignored(g) and g.index in scores]
        limits = [self.limits(g, scores[g.index]) for g in pruned]
        cost = SizeEstimate(graph, deps)
        prunable = sum(len(g.prunable_units) for g in pruned)

        def removal(level: float) -> list[np.ndarray]:
            return plan_removal(limits, self.allocation, level)

        def measure(level: float) -> float:
            chosen = removal(level)
            return cost.removed_fraction(
                self.target, np.concatenate(chosen) if chosen else np.zeros(0), prunable
            )

        fixed_level = self.allocation == "local" and self.target == "channels"
        level, estimate = (
            (self.ratio, measure(self.ratio)) if fixed_level else bisect_level(measure, self.ratio)
        )
        chosen = removal(level)
        per_group = {g.index: np.sort(c) for g, c in zip(pruned, chosen, strict=True)}
        removed = [per_group.get(g.index, np.zeros(0, dtype=np.int64)) for g in deps.groups]
        target = {
            "kind": self.target,
            "requested": self.ratio,
            "estimated": round(float(estimate), 4),
            "most_possible": None if fixed_level else round(float(measure(1.0)), 4),
            "prunable_channels": prunable,
            "overridden_groups": sum(self._override(g) is not None for g in pruned),
        }
        return removed, target

    def _rows(
        self, deps: DependencyInfo, removed: list[np.ndarray], scored: set[int], criterion: str
    ) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for group, chosen in zip(deps.groups, removed, strict=True):
            if self._ignored(group):
                reason = "ignored"
            elif group.index not in scored:
                reason = f"not scored by {criterion}"
            else:
                reason = next(iter(group.frozen_units.values()), "")
            rows.append(
                {
                    "index": group.index,
                    "layers": ", ".join(group.layers),
                    "before": len(group.units),
                    "after": len(group.units) - len(chosen),
                    "frozen": reason,
                }
            )
        return rows

    def _achieved(
        self, graph: Graph, before: tuple[int, int], target: dict[str, Any], removed_count: int
    ) -> None:
        params, macs = before
        if self.target == "params":
            achieved = 1.0 - graph.num_parameters() / max(params, 1)
        elif self.target == "macs":
            achieved = 1.0 - count_macs(graph) / max(macs, 1)
        else:
            achieved = removed_count / max(target["prunable_channels"], 1)
        target["achieved"] = round(achieved, 4)
        target["within_tolerance"] = abs(achieved - self.ratio) <= _TOLERANCE
        if target["within_tolerance"]:
            return
        most = target["most_possible"]
        if not target["prunable_channels"]:
            target["note"] = (
                "nothing could be pruned: every group is frozen or ignored (the report's group "
                "table and 'Ops without a channel rule' say why for each)"
            )
        elif target["overridden_groups"]:
            target["note"] = (
                f"overrides fix the ratio of {target['overridden_groups']} group(s), so the "
                "total follows them rather than `ratio`"
            )
        elif most is not None and most < self.ratio - _TOLERANCE:
            target["note"] = (
                f"at most {most:.1%} of {self.target} can go: frozen units, ignore, overrides, "
                f"max_ratio={self.max_ratio} and min_channels={self.min_channels} limit the rest"
            )
        elif abs(achieved - target["estimated"]) > 1e-3:
            target["note"] = (
                f"the size estimate was {target['estimated']:.1%} but the pruned graph measures "
                f"{achieved:.1%}: the estimate, made from the dependency slots before rewriting, "
                "does not capture how every op's cost depends on the removed channels"
            )
        else:
            target["note"] = (
                "channels come in whole units: no allocation lands closer "
                f"(round_to={self.round_to}, per-group floor of ratio x units)"
            )

    def _refit(
        self,
        graph: Graph,
        calibration: Calibration,
        deps: DependencyInfo,
        removed: np.ndarray,
        reference: fx.GraphModule,
    ) -> list[dict[str, object]]:
        gone = set(removed.tolist())
        layers = [
            c
            for c in consumer_inputs(graph, deps)
            if gone.intersection(deps.slot_units[c.slot].tolist())
        ]
        rows: list[dict[str, object]] = []
        with graph.rewrite(self.name) as rw:
            for consumer in dict.fromkeys(c.op.name for c in layers):
                op = graph.node(consumer)
                reason = refusal(op)
                if reason is not None:
                    rows.append({"layer": consumer, "skipped": reason})
                    continue
                out_slot = (consumer, 1 if layer_kind(op) == "conv" else op.meta["val"].dim() - 1)
                keep = deps.keep_indices(out_slot, removed) if out_slot in deps.slot_units else None
                fit: LayerFit = refit_layer(
                    graph, rw, reference, calibration, consumer, keep, self.ridge
                )
                rows.append(
                    {
                        "layer": fit.layer,
                        "error_before": round(fit.error_before, 5),
                        "error_after": round(fit.error_after, 5),
                    }
                )
        return rows

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        calibration = (
            require_calibration(am.calibration, f"{self.name}{{reconstruct=true}}")
            if self.reconstruct
            else None
        )
        deps = am.get(DependencyGroups())
        criterion = am.provider("channel-importance", MagnitudeImportance())
        scores = am.get(criterion)
        before = (graph.num_parameters(), count_macs(graph))
        removed, target = self._plan(graph, deps, scores)
        all_removed = np.concatenate(removed) if removed else np.zeros(0, dtype=np.int64)
        reference = (
            fx.GraphModule(graph.module, copy.deepcopy(graph.module.graph))
            if self.reconstruct
            else None
        )
        remove_units(graph, deps, all_removed, self.name)
        groups = self._rows(deps, removed, set(scores), criterion.name)
        self._achieved(graph, before, target, len(all_removed))
        reconstruction = (
            self._refit(graph, calibration, deps, all_removed, reference)
            if reference is not None and calibration is not None and len(all_removed)
            else None
        )
        summary = PruneChannelsSummary(groups=groups, target=target, reconstruction=reconstruction)
        return PassResult(changed=len(all_removed) > 0, summary=summary)
