"""Expert usage: how much each mixture-of-experts layer's router uses each of its experts.

Rules:
- a MoE layer is a dependency group with `routing` (a `topk` chooses among its units: the
  router's output rows, every expert parameter the chosen indices gather); its experts are
  the elements of the axis the topk chose from, in the router's order;
- statistics stream over the calibration data at each topk: `frequency` is the fraction of
  routed tokens that choose the expert (over all experts it sums to top_k); `gate_mass` is
  the mean router probability the expert receives where it is chosen (zero elsewhere). The
  probabilities are the topk's input when that is a distribution (rows non-negative and
  summing to 1, as after Mixtral's and Qwen-MoE's softmax), else its softmax;
- gate mass is the default criterion of `prune-experts`: an expert's output enters the
  layer scaled by its routing weight, so the weight it receives is the share of the layer's
  output lost with it; frequency counts a choice with weight 0.05 like one with 0.9;
- with `output_error=true`, `output_error` is, per expert, the mean squared change of the
  model's outputs when that expert alone is removed: its probability is set to 0 and the
  row renormalised (its logit to -inf when the topk reads logits), which is exactly the
  softmax over the other experts that pruning leaves, so tokens reroute as they will. It
  costs one calibration pass per expert of every layer, and scores experts one at a time
  (removing two is not the sum of removing each);
- a layer whose experts cannot be removed is listed with `reason` and still scored.

Example:
    for layer in am.get(ExpertUsage()):
        print(layer.layer, layer.gate_mass)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._streaming import fan_out, tap
from sparsec.passes.analysis.dependency_groups import DependencyGroup, DependencyGroups
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["ExpertLayer", "ExpertUsage", "moe_layers"]


@dataclass(frozen=True)
class ExpertLayer:
    """One MoE layer: its experts (as units of its group) and their usage on calibration data."""

    layer: str  # the module holding the router and the experts (else the router)
    router: str  # the layer producing the router's logits
    group: int
    units: np.ndarray = field(repr=False)  # the unit of each expert, in the router's order
    top_k: int
    reason: str = ""  # why no expert can be removed ('' when they can)
    tokens: int = 0
    frequency: np.ndarray | None = field(default=None, repr=False)
    gate_mass: np.ndarray | None = field(default=None, repr=False)
    output_error: np.ndarray | None = field(default=None, repr=False)

    @property
    def experts(self) -> int:
        return len(self.units)


def _common_path(targets: list[str]) -> str:
    parts = [t.split(".")[:-1] for t in targets]
    common = os.path.commonprefix(parts) if parts else []
    return ".".join(common)


def _layer(group: DependencyGroup, units: np.ndarray) -> ExpertLayer:
    routing = group.routing
    assert routing is not None  # callers pass routed groups only
    routers = [p.layer for p in group.params if p.role == "producer"]
    router = routers[0] if routers else ""
    return ExpertLayer(
        layer=_common_path([p.target for p in group.params]) or router,
        router=router,
        group=group.index,
        units=units,
        top_k=routing.top_k,
        reason=routing.reason,
    )


def moe_layers(graph: Graph, am: AnalysisManager) -> list[ExpertLayer]:
    """The MoE layers of the graph in graph order, without usage statistics."""
    deps = am.get(DependencyGroups())
    return [
        _layer(g, deps.slot_units[g.routing.chosen[0]]) for g in deps.groups if g.routing is not None
    ]


def _is_distribution(x: torch.Tensor, dim: int) -> bool:
    """Whether the rows along `dim` are probabilities (non-negative, summing to 1)."""
    sums = x.detach().double().sum(dim, keepdim=True)
    return bool((x >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


def _probabilities(x: torch.Tensor, dim: int) -> torch.Tensor:
    x = x.detach().double()
    return x if _is_distribution(x, dim) else torch.softmax(x, dim)


class _Counts:
    def __init__(self, experts: int) -> None:
        self.chosen = torch.zeros(experts, dtype=torch.float64)
        self.mass = torch.zeros(experts, dtype=torch.float64)
        self.tokens = 0

    def add(self, probs: torch.Tensor, indices: torch.Tensor, dim: int) -> None:
        experts = probs.shape[dim]
        probs = probs.movedim(dim, -1).reshape(-1, experts)
        indices = indices.movedim(dim, -1).reshape(probs.shape[0], -1)
        self.tokens += probs.shape[0]
        self.chosen += torch.bincount(indices.flatten(), minlength=experts).double()
        self.mass.index_add_(0, indices.flatten(), probs.gather(1, indices).flatten())


@register
@pass_dataclass
class ExpertUsage(Analysis):
    """Selection frequency and gate mass of every expert on calibration data (see module)."""

    name: ClassVar[str] = "expert-usage"
    output_error: bool = False

    def run(self, graph: Graph, am: AnalysisManager) -> list[ExpertLayer]:
        layers = moe_layers(graph, am)
        if not layers:
            return []
        calibration = require_calibration(am.calibration, self.name)
        deps = am.get(DependencyGroups())
        nodes = {n.name: n for n in graph.nodes}
        seen: dict[str, torch.Tensor] = {}
        counts: dict[int, _Counts] = {}
        watch: dict[str, list[Callable[[Any], None]]] = {}
        for layer in layers:
            routing = deps.groups[layer.group].routing
            assert routing is not None
            counts[layer.group] = _Counts(layer.experts)
            for name, (source, dim) in zip(routing.selectors, routing.chosen, strict=True):
                _watch(source, dim, nodes[name].name, counts[layer.group], seen, watch)
        callbacks = {name: fan_out(fns) for name, fns in watch.items()}
        errors = {layer.group: np.zeros(layer.experts) for layer in layers}
        batches = 0
        for args, kwargs in calibration:
            batches += 1
            seen.clear()
            base = tap(graph.module, args, kwargs, watch=callbacks)
            if self.output_error:
                for layer in layers:
                    routing = deps.groups[layer.group].routing
                    assert routing is not None
                    errors[layer.group] += _output_errors(graph, args, kwargs, base, routing.chosen, layer.experts)
        scored = []
        for layer in layers:
            c = counts[layer.group]
            tokens = max(c.tokens, 1)
            scored.append(
                ExpertLayer(
                    **{
                        **layer.__dict__,
                        "tokens": c.tokens,
                        "frequency": (c.chosen / tokens).numpy(),
                        "gate_mass": (c.mass / tokens).numpy(),
                        "output_error": (
                            errors[layer.group] / max(batches, 1) if self.output_error else None
                        ),
                    }
                )
            )
        return scored


def _without(expert: int, dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The router's row with `expert` removed: probability 0 and renormalised, or logit -inf."""

    def remove(x: torch.Tensor) -> torch.Tensor:
        index = torch.tensor([expert], device=x.device)
        if _is_distribution(x, dim):
            kept = x.index_fill(dim, index, 0.0)
            return kept / kept.sum(dim, keepdim=True)
        return x.index_fill(dim, index, float("-inf"))

    return remove


def _output_errors(
    graph: Graph,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    base: list[Any],
    chosen: tuple[tuple[str, int], ...],
    experts: int,
) -> np.ndarray:
    """Per expert: the mean squared change of the float outputs when it alone is removed."""
    errors = np.zeros(experts)
    for expert in range(experts):
        transform = {name: _without(expert, dim) for name, dim in chosen}
        outputs = tap(graph.module, args, kwargs, transform=transform)
        for old, new in zip(base, outputs, strict=True):
            if isinstance(old, torch.Tensor) and old.is_floating_point() and old.numel():
                errors[expert] += float((new.double() - old.double()).square().mean())
    return errors


def _watch(
    source: str,
    dim: int,
    topk: str,
    counts: _Counts,
    seen: dict[str, torch.Tensor],
    watch: dict[str, list[Callable[[Any], None]]],
) -> None:
    """Keep the topk's input (`source`) until the topk has run, then count its choices."""
    watch.setdefault(source, []).append(lambda value: seen.__setitem__(source, value))

    def add(value: Any) -> None:
        counts.add(_probabilities(seen[source], dim), value[1], dim)

    watch.setdefault(topk, []).append(add)
