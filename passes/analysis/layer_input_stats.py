"""Statistics of what each linear layer reads, streamed over calibration batches.

Rules:
- a "layer" is an `aten.linear` node whose weight is a 2-D get_attr; its input rows are the
  input flattened to `[-1, in_features]`;
- per layer: the row count, the sum of squares of each input feature (Wanda's ‖X_j‖²) and,
  with `gram=True`, the Gram matrix XᵀX (SparseGPT's Hessian up to a factor 2/rows);
- `StagedCalibration` runs the graph one stage (a few linear layers and the nodes before
  them) at a time over every batch, keeping only the values that cross into later stages:
  memory is bounded by (batches × boundary values) + one stage's work, never the whole
  model's activations; `peak_bytes` records the largest boundary it held;
- `weights` overrides graph tensors by target, so a caller can replace a stage's weights
  between `stats` and `advance` without editing the graph (SparseGPT's sequential order);
- the `layer-input-stats` analysis is the one-shot case (the dense graph's inputs).

Example:
    stats = am.get(LayerInputStats(gram=False))["fc1.weight"].column_norms()
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from sparsec.calibration import Calibration, require_calibration
from sparsec.ir import Graph
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["LayerInputStats", "LinearInputStats", "StagedCalibration", "linear_layers"]

_LINEAR = torch.ops.aten.linear.default


def linear_layers(graph: Graph) -> list[fx.Node]:
    """`aten.linear` nodes with a 2-D get_attr weight, in graph order."""
    layers = []
    for node in graph.module.graph.nodes:
        if node.op == "call_function" and node.target == _LINEAR:
            weight = node.args[1]
            if (
                isinstance(weight, fx.Node)
                and weight.op == "get_attr"
                and graph.tensor(str(weight.target)).dim() == 2
            ):
                layers.append(node)
    return layers


@dataclass
class LinearInputStats:
    """Running sums over the rows a linear layer read."""

    rows: int = 0
    square_sums: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor, with_gram: bool) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        self.rows += flat.shape[0]
        squares = flat.pow(2).sum(0)
        self.square_sums = squares if self.square_sums is None else self.square_sums + squares
        if with_gram:
            product = flat.t() @ flat
            self.gram = product if self.gram is None else self.gram + product

    def column_norms(self) -> torch.Tensor:
        """‖X_j‖₂ for each input feature j (Wanda's activation factor)."""
        if self.square_sums is None:
            raise ValueError("no calibration rows reached this layer")
        return self.square_sums.sqrt()


@dataclass
class StagedCalibration:
    """Runs calibration through the graph in stages of `layers_per_stage` linear layers."""

    graph: Graph
    calibration: Calibration
    layers_per_stage: int = 1
    peak_bytes: int = 0
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    _states: list[dict[fx.Node, Any]] = field(default_factory=list)
    _stages: list[list[fx.Node]] = field(default_factory=list)

    def __post_init__(self) -> None:
        nodes = [n for n in self.graph.module.graph.nodes if n.op != "output"]
        layers = set(linear_layers(self.graph))
        stage: list[fx.Node] = []
        count = 0
        for node in nodes:
            stage.append(node)
            if node in layers:
                count += 1
                if count == self.layers_per_stage:
                    self._stages.append(stage)
                    stage, count = [], 0
        if stage:
            self._stages.append(stage)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        spec = self.graph.module._in_spec
        for args, kwargs in self.calibration:
            keys = list(spec.children()[1].context or [])
            leaves = pytree.tree_leaves((tuple(args), {k: kwargs[k] for k in keys}))
            self._states.append(dict(zip(placeholders, leaves, strict=True)))

    @property
    def stages(self) -> list[list[fx.Node]]:
        return self._stages

    def layers(self, stage: int) -> list[fx.Node]:
        """The linear layers of `stage`, in order."""
        wanted = set(linear_layers(self.graph))
        return [n for n in self._stages[stage] if n in wanted]

    def _value(self, env: dict[fx.Node, Any], node: fx.Node) -> Any:
        """A node's value: computed in `env`, or a weight read now (never held in a state)."""
        if node.op == "get_attr":
            target = str(node.target)
            return self.weights[target] if target in self.weights else self.graph.tensor(target)
        return env[node]

    def _run(self, stage: int, env: dict[fx.Node, Any], hook: Any = None) -> None:
        for node in self._stages[stage]:
            if node.op in ("placeholder", "get_attr"):
                continue
            args = fx.node.map_arg(node.args, lambda a: self._value(env, a))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: self._value(env, a))
            if hook is not None:
                hook(node, args)
            env[node] = node.target(*args, **kwargs)

    def stats(self, stage: int, *, gram: bool) -> dict[str, LinearInputStats]:
        """Input statistics of `stage`'s layers under the graph's current weights."""
        wanted = set(self.layers(stage))
        stats = {str(n.args[1].target): LinearInputStats() for n in wanted}  # type: ignore[union-attr]

        def hook(node: fx.Node, args: tuple[Any, ...]) -> None:
            if node in wanted:
                stats[str(node.args[1].target)].add(args[0], gram)  # type: ignore[union-attr]

        with torch.no_grad():
            for state in self._states:
                env = dict(state)
                self._run(stage, env, hook)
        return stats

    def advance(self, stage: int) -> None:
        """Run `stage` with the current weights; keep only values later stages read."""
        later = {n for s in self._stages[stage + 1 :] for n in s}
        total = 0
        with torch.no_grad():
            for index, state in enumerate(self._states):
                env = dict(state)
                self._run(stage, env)
                kept = {
                    node: value
                    for node, value in env.items()
                    if any(user in later for user in node.users)
                }
                self._states[index] = kept
                total += sum(
                    leaf.numel() * leaf.element_size()
                    for leaf in pytree.tree_leaves(list(kept.values()))
                    if isinstance(leaf, torch.Tensor)
                )
        self.peak_bytes = max(self.peak_bytes, total)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._stages)))


@register
@pass_dataclass
class LayerInputStats(Analysis):
    """Per linear layer (by weight target): row count, ‖X_j‖² and optionally XᵀX."""

    name: ClassVar[str] = "layer-input-stats"
    gram: bool = False

    def run(self, graph: Graph, am: AnalysisManager) -> dict[str, LinearInputStats]:
        calibration = require_calibration(am.calibration, self.name)
        layers = max(1, len(linear_layers(graph)))
        runner = StagedCalibration(graph, calibration, layers_per_stage=layers)
        # one stage holds every layer: one pass over the batches, one batch at a time
        return runner.stats(0, gram=self.gram) if runner.stages else {}
