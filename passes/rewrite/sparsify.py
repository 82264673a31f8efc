"""Fine-grained sparsity: zero weights of linear layers in a pattern, and record the masks.

Rules:
- layers are `aten.linear` nodes with a 2-D weight; patterns: `unstructured` (exactly
  round(sparsity · weights) zeros per layer), `nm` (n kept of every m consecutive input
  features; sparsity is 1 − n/m), `block` (whole r×c blocks, r along outputs, c inputs);
- selection: `magnitude` (|W|, no data), `wanda` (|W_ij|·‖X_j‖, compared per output row for
  unstructured; one streamed pass of calibration through the dense graph, from the
  `layer-input-stats` analysis), `sparsegpt` (OBS reconstruction that updates the surviving
  weights; layers in graph order, calibration streamed `layers_per_stage` layers at a time
  with the earlier layers already sparsified; the peak of held activations is reported);
- `ignore` globs (weight target or layer name) skip layers; `overrides` are
  `(glob, sparsity)` pairs, the first match wins; a layer whose shape does not divide the
  block or group is skipped and the summary says why (nothing is padded);
- the masks go into `graph.module.meta["sparsec.masks"]` (see `sparsec.ops.masks`) for
  mask-preserving fine-tuning and `lower-sparse-weights`.

Example:
    pipeline(sparsify{pattern=nm,n=2,m=4,method=sparsegpt},lower-sparse-weights)
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any, ClassVar, Literal

import pydantic
import torch
from pydantic import Field

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.ops.masks import MASKS_META, SparsityPattern, WeightMask, mask_from_scores
from sparsec.passes.analysis.layer_input_stats import (
    LayerInputStats,
    StagedCalibration,
    linear_layers,
)
from sparsec.passes.rewrite._sparsegpt import sparsegpt
from sparsec.pipeline import AnalysisManager, PassResult, RewritePass, pass_dataclass, register

__all__ = ["Sparsify"]


@register
@pass_dataclass
class Sparsify(RewritePass):
    """Zero weights of every linear layer in an unstructured, N:M or block pattern."""

    name: ClassVar[str] = "sparsify"
    pattern: Literal["unstructured", "nm", "block"] = "unstructured"
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    n: Annotated[int, Field(ge=1)] = 2
    m: Annotated[int, Field(ge=2)] = 4
    block: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (16, 1)
    method: Literal["magnitude", "wanda", "sparsegpt"] = "magnitude"
    ignore: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Annotated[float, Field(ge=0.0, lt=1.0)]], ...] = ()
    layers_per_stage: Annotated[int, Field(ge=1)] = 1
    blocksize: Annotated[int, Field(ge=1)] = 128
    damp: Annotated[float, Field(gt=0.0)] = 0.01

    @pydantic.model_validator(mode="after")
    def _n_below_m(self) -> Sparsify:
        if self.pattern == "nm" and self.n >= self.m:
            raise ValueError(f"N:M needs n < m, got n={self.n}, m={self.m}")
        return self

    def layer_pattern(self, target: str) -> SparsityPattern | None:
        """The pattern for the weight `target`, or None if it is ignored."""
        layer = target.rsplit(".", 1)[0]
        if any(fnmatch.fnmatch(target, g) or fnmatch.fnmatch(layer, g) for g in self.ignore):
            return None
        sparsity = next(
            (
                s
                for glob, s in self.overrides
                if fnmatch.fnmatch(target, glob) or fnmatch.fnmatch(layer, glob)
            ),
            self.sparsity,
        )
        return SparsityPattern(self.pattern, sparsity, self.n, self.m, tuple(self.block))

    def _plan(self, graph: Graph) -> tuple[dict[str, SparsityPattern], list[dict[str, Any]]]:
        """Which weights get which pattern; a row for every layer that does not."""
        plan: dict[str, SparsityPattern] = {}
        rows: list[dict[str, Any]] = []
        for node in linear_layers(graph):
            target = str(node.args[1].target)  # type: ignore[union-attr]
            if target in plan:
                continue
            shape = tuple(graph.tensor(target).shape)
            pattern = self.layer_pattern(target)
            reason = "ignored" if pattern is None else pattern.refusal(shape)
            if reason is not None or pattern is None:
                rows.append(
                    {
                        "layer": target,
                        "shape": shape,
                        "pattern": "dense",
                        "sparsity": 0.0,
                        "note": f"skipped: {reason}",
                    }
                )
            else:
                plan[target] = pattern
        return plan, rows

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        plan, rows = self._plan(graph)
        summary: dict[str, Any] = {"pattern": self.pattern, "method": self.method}
        if self.method == "sparsegpt":
            results = self._sparsegpt(graph, am, plan, summary)
        else:
            stats = am.get(LayerInputStats(gram=False)) if self.method == "wanda" else {}
            results = {}
            for target, pattern in plan.items():
                weight = graph.tensor(target).detach()
                scores = weight.abs().float()
                if self.method == "wanda":
                    scores = scores * stats[target].column_norms().unsqueeze(0)
                mask = mask_from_scores(
                    scores,
                    pattern,
                    per_row=self.method == "wanda" and pattern.kind == "unstructured",
                )
                results[target] = (weight * mask, mask)
        with graph.rewrite(self.name) as rw:
            for target, (weight, _) in results.items():
                rw.replace_tensor(target, weight)
        masks = graph.module.meta.setdefault(MASKS_META, {})
        for target, (weight, mask) in results.items():
            masks[target] = WeightMask(plan[target], mask)
            rows.append(
                {
                    "layer": target,
                    "shape": tuple(weight.shape),
                    "pattern": str(plan[target]),
                    "sparsity": round(1.0 - float(mask.float().mean()), 4),
                    "note": self.method,
                }
            )
        summary["layers"] = rows
        return PassResult(changed=bool(results), changes=tuple(rw.changes), summary=summary)

    def _sparsegpt(
        self,
        graph: Graph,
        am: AnalysisManager,
        plan: dict[str, SparsityPattern],
        summary: dict[str, Any],
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Sparsify layer stage by stage; later stages see earlier stages' new weights."""
        calibration = require_calibration(am.calibration, f"{self.name}{{method=sparsegpt}}")
        runner = StagedCalibration(graph, calibration, layers_per_stage=self.layers_per_stage)
        results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        stages = list(runner)
        for stage in stages:
            targets = [str(n.args[1].target) for n in runner.layers(stage)]  # type: ignore[union-attr]
            targets = [t for t in targets if t in plan and t not in results]
            if targets:
                stats = runner.stats(stage, gram=True)
                for target in targets:
                    gram = stats[target].gram
                    weight, mask = sparsegpt(
                        graph.tensor(target),
                        gram,
                        plan[target],
                        blocksize=self.blocksize,
                        damp=self.damp,  # type: ignore[arg-type]
                    )
                    results[target] = (weight, mask)
                    runner.weights[target] = weight
            if stage != stages[-1]:
                runner.advance(stage)
        summary["stages"] = len(stages)
        summary["peak_calibration_bytes"] = runner.peak_bytes
        return results
