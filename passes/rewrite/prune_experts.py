"""Expert pruning: remove the least-used experts of every mixture-of-experts layer.

Rules:
- MoE layers and their usage come from `expert-usage` (calibrated router statistics);
  `criterion` picks the score: "gate-mass" (default: the routing weight an expert receives,
  the share of the layer's output it carries), "frequency" (how often it is chosen) or
  "output-error" (how much the model's outputs move when the expert alone is removed and
  its tokens reroute; one calibration pass per expert);
- each layer loses `round(ratio * experts)`, or `count`, of its lowest-scoring experts;
  `layers` fixes the count per layer by a glob on the layer's path (`[[model.layers.0.*, 1]]`;
  the first matching pattern wins; a count of 0 leaves a layer alone);
- an expert goes whole: the router's output row (and bias), and index 0 of every expert
  parameter its index gathers, through the dependency group (`remove_units`);
- refusals are `PreconditionError`s that name the layer and the fix: a layer would lose
  every expert, or keep fewer than the top_k its router chooses per token; experts the
  analysis cannot follow (their reason); a graph with no MoE layer;
- routing afterwards: the router's softmax runs over the kept experts' logits only. Where
  the top-k weights are renormalised (Mixtral; Qwen-MoE with `norm_topk_prob=True`) a
  token whose chosen experts are all kept gets exactly the same experts and weights, so its
  output is unchanged; a token that chose a removed expert takes the next-best kept one.
  Without renormalisation (Qwen2-MoE's default) every token's weights grow by
  1 / (1 - the probability its router gave the removed experts), so all outputs move;
- the summary lists every layer: experts before and after, top_k, the score of each
  expert, the kept and the removed indices (in the router's original order).

Example:
    pipeline(prune-experts{ratio=0.25})
    pipeline(prune-experts{layers=[[model.layers.0.*, 1], [model.layers.1.*, 2]],criterion=frequency})
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from sparsec.errors import PreconditionError
from sparsec.ir import Graph
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.analysis.expert_usage import ExpertLayer, ExpertUsage
from sparsec.passes.rewrite.shrink import remove_units
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["ExpertCriterion", "PruneExperts", "PruneExpertsSummary"]

ExpertCriterion = Literal["gate-mass", "frequency", "output-error"]


@dataclass(frozen=True, kw_only=True)
class PruneExpertsSummary(PassSummary):
    """What `prune-experts` did: a row per MoE layer (experts before and after, top_k,
    scores, kept and removed experts); the number of experts removed in all."""

    criterion: ExpertCriterion
    layers: list[dict[str, object]]
    removed: int


def _scores(layer: ExpertLayer, criterion: ExpertCriterion) -> np.ndarray:
    scores = {
        "gate-mass": layer.gate_mass, "frequency": layer.frequency, "output-error": layer.output_error
    }[criterion]
    assert scores is not None  # ExpertUsage fills what the criterion asks for
    return np.asarray(scores, dtype=np.float64)


@register
@pass_dataclass
class PruneExperts(RewritePass):
    """Remove the least-used experts of each MoE layer (see module docstring)."""

    name: ClassVar[str] = "prune-experts"
    ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    count: Annotated[int, Field(ge=0)] | None = None
    layers: tuple[tuple[str, Annotated[int, Field(ge=0)]], ...] = ()
    criterion: ExpertCriterion = "gate-mass"

    def _wanted(self, layer: ExpertLayer) -> int:
        for pattern, count in self.layers:
            if fnmatch.fnmatch(layer.layer, pattern) or fnmatch.fnmatch(layer.router, pattern):
                return count
        return self.count if self.count is not None else round(self.ratio * layer.experts)

    def _check(self, layer: ExpertLayer, wanted: int) -> None:
        kept = layer.experts - wanted
        if wanted and layer.reason:
            raise PreconditionError(
                f"{self.name}: the experts of {layer.layer} cannot be removed: {layer.reason}. "
                "Fix: dispatch tokens as weights[topk_indices] (index, gather or index_select "
                "of the indices), as Hugging Face's batched_mm experts do, or leave the layer "
                f"out (layers=[[{layer.layer}, 0]])"
            )
        if kept <= 0:
            raise PreconditionError(
                f"{self.name} would remove every expert of {layer.layer} ({layer.experts}). "
                f"Fix: remove at most {layer.experts - layer.top_k} there (its router chooses "
                f"{layer.top_k} per token)"
            )
        if kept < layer.top_k:
            raise PreconditionError(
                f"{self.name} would leave {layer.layer} {kept} experts, fewer than the "
                f"{layer.top_k} its router chooses per token (top_k). Fix: remove at most "
                f"{layer.experts - layer.top_k} there (ratio <= "
                f"{(layer.experts - layer.top_k) / layer.experts:.3g})"
            )

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        layers = am.get(ExpertUsage(output_error=self.criterion == "output-error"))
        if not layers:
            raise PreconditionError(
                f"{self.name}: the graph has no mixture-of-experts layer (no topk chooses among "
                "a layer's outputs). Fix: drop prune-experts from the pipeline, or trace the "
                "MoE model itself"
            )
        rows: list[dict[str, object]] = []
        removed: list[int] = []
        for layer in layers:
            wanted = self._wanted(layer)
            self._check(layer, wanted)
            scores = _scores(layer, self.criterion)
            order = np.lexsort((np.arange(layer.experts), scores))
            gone = sorted(int(e) for e in order[:wanted])
            removed.extend(int(layer.units[e]) for e in gone)
            rows.append({
                "layer": layer.layer,
                "router": layer.router,
                "experts": layer.experts,
                "after": layer.experts - wanted,
                "top_k": layer.top_k,
                "scores": [round(float(s), 6) for s in scores],
                "kept": [e for e in range(layer.experts) if e not in gone],
                "removed": gone,
                **({"frozen": layer.reason} if layer.reason else {}),
            })
        summary = PruneExpertsSummary(criterion=self.criterion, layers=rows, removed=len(removed))
        if not removed:
            return PassResult(changed=False, preserved=frozenset(), summary=summary)
        deps = am.get(DependencyGroups())
        remove_units(graph, deps, np.array(sorted(set(removed)), dtype=np.int64), self.name)
        return PassResult(changed=True, preserved=frozenset(), summary=summary)
