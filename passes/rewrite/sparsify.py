"""Fine-grained sparsity: zero weights of linear and conv layers in a pattern, record the masks.

Rules:
- `layers` picks the kinds: `aten.linear` nodes with a 2-D weight, and with "conv"
  `aten.conv1d`/`conv2d` nodes (opt-in, so the presets and existing pipelines keep their
  meaning); patterns: `unstructured` (exactly round(sparsity · weights) zeros per layer),
  `nm` (n kept of every m consecutive input features; sparsity is 1 − n/m), `block` (whole
  r×c blocks, r along outputs, c inputs);
- a conv is sparsified as its implicit-GEMM matrix `[out, kernel · in/groups]`, input
  channels innermost (`sparsec.ops.weight_matrix`): an N:M group is m consecutive input
  channels of one kernel position, a block r output channels × c such channels, so
  `in/groups` must divide by m (or c); the data of Wanda and SparseGPT is the unfolded
  input (im2col) in that column order; a grouped or depthwise conv is sparsified per group
  (each group's rows are scored and reconstructed with its own input channels' statistics;
  no block spans two groups; a depthwise conv, one channel per group, takes unstructured
  only); conv3d and transposed convs are listed as skipped; the mask has the weight's shape;
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
    pipeline(sparsify{pattern=nm,n=2,m=4,layers=[linear,conv]},lower-sparse-weights)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import pydantic
import torch
from pydantic import Field

from sparsec.calibration import require_calibration
from sparsec.errors import PreconditionError
from sparsec.ir import Graph
from sparsec.ops.masks import (
    SparsityPattern,
    WeightMask,
    from_weight_matrix,
    mask_from_scores,
    weight_matrix,
)
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.analysis.layer_input_stats import (
    InputStats,
    LayerInputStats,
    LayerKind,
    StagedCalibration,
    conv_spec,
    weight_layers,
)
from sparsec.passes.rewrite._sparsegpt import sparsegpt
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["Sparsify", "SparsifySummary", "layer_row"]

Pattern = Literal["unstructured", "nm", "block"]
Method = Literal["magnitude", "wanda", "sparsegpt"]

aten = torch.ops.aten
_OTHER_CONVS = (
    aten.conv3d.default,
    aten.conv3d.padding,
    aten.conv_transpose1d.default,
    aten.conv_transpose2d.input,
    aten.conv_transpose3d.input,
)


def _wanda_scores(weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """|W_ij|·‖X_j‖ on the weight's matrix view; a grouped conv's rows use their group's norms."""
    matrix = weight_matrix(weight.detach()).abs().float()
    norms = stats.column_norms()
    if norms.dim() == 2:  # [groups, in per group]
        norms = norms.repeat_interleave(matrix.shape[0] // norms.shape[0], 0)
    return matrix * norms


def _require_stats(stats: InputStats | None, who: str, target: str) -> InputStats:
    if stats is None or stats.rows == 0:
        raise PreconditionError(
            f"{who}: no calibration rows reached the layer of @{target}; "
            "give calibration batches that run through the whole model"
        )
    return stats


def layer_row(
    target: str,
    shape: tuple[int, ...],
    outcome: SparsityPattern | str,
    mask: torch.Tensor | None = None,
    note: str = "",
) -> dict[str, Any]:
    """A summary row: the layer's pattern and measured sparsity, or (`outcome` a reason)
    why it stayed dense."""
    if isinstance(outcome, str):
        return {
            "layer": target,
            "shape": shape,
            "pattern": "dense",
            "sparsity": 0.0,
            "note": f"skipped: {outcome}",
        }
    sparsity = 0.0 if mask is None else round(1.0 - float(mask.float().mean()), 4)
    return {"layer": target, "shape": shape, "pattern": str(outcome), "sparsity": sparsity, "note": note}


@dataclass(frozen=True, kw_only=True)
class SparsifySummary(PassSummary):
    """What `sparsify` did: a row per layer (its pattern and sparsity, or why it was skipped);
    with SparseGPT also how many calibration stages ran and the most activation bytes held."""

    pattern: Pattern
    method: Method
    stages: int | None = None
    peak_calibration_bytes: int | None = None
    layers: list[dict[str, Any]]


@register
@pass_dataclass
class Sparsify(RewritePass):
    """Zero weights of every linear (and conv) layer in an unstructured, N:M or block pattern."""

    name: ClassVar[str] = "sparsify"
    pattern: Pattern = "unstructured"
    sparsity: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    n: Annotated[int, Field(ge=1)] = 2
    m: Annotated[int, Field(ge=2)] = 4
    block: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (16, 1)
    method: Method = "magnitude"
    ignore: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Annotated[float, Field(ge=0.0, lt=1.0)]], ...] = ()
    layers_per_stage: Annotated[int, Field(ge=1)] = 1
    blocksize: Annotated[int, Field(ge=1)] = 128
    damp: Annotated[float, Field(gt=0.0)] = 0.01
    layers: Annotated[tuple[LayerKind, ...], Field(min_length=1)] = ("linear",)

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

    def weight_pattern(
        self, target: str, shape: tuple[int, ...], groups: int = 1
    ) -> SparsityPattern | str:
        """The pattern for the weight `target` of `shape`, or why it stays dense (ignored, or
        its shape does not divide the pattern's groups or blocks)."""
        pattern = self.layer_pattern(target)
        if pattern is None:
            return "ignored"
        return pattern.refusal(shape, groups) or pattern

    def prune_weight(
        self,
        target: str,
        weight: torch.Tensor,
        pattern: SparsityPattern,
        stats: InputStats | None,
        groups: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The pruned weight and its keep-mask, by `method`, from the layer's input `stats`
        (column norms for Wanda, the Gram matrix for SparseGPT; magnitude reads none).

        The whole-graph pass and `sparsec.sparsify_checkpoint` (one decoder block at a time)
        both prune through here, so their weights agree.
        """
        if self.method != "sparsegpt":
            scores = (
                weight_matrix(weight).abs().float()
                if self.method == "magnitude"
                else _wanda_scores(weight, _require_stats(stats, self.name, target))
            )
            mask = mask_from_scores(
                scores,
                pattern,
                per_row=self.method == "wanda" and pattern.kind == "unstructured",
            )
            mask = from_weight_matrix(mask, weight.shape)
            return weight * mask, mask
        gram = _require_stats(stats, self.name, target).gram
        if gram is None:
            raise PreconditionError(
                f"{self.name}: no calibration rows reached the layer of @{target}; "
                "give calibration batches that run through the whole model"
            )
        # a grouped conv: each group's rows are reconstructed on its own inputs
        parts = [
            sparsegpt(rows, group_gram, pattern, blocksize=self.blocksize, damp=self.damp)
            for rows, group_gram in zip(
                weight_matrix(weight).chunk(groups),
                gram.reshape(groups, *gram.shape[-2:]),
                strict=True,
            )
        ]
        mask = from_weight_matrix(torch.cat([m for _, m in parts]), weight.shape)
        return from_weight_matrix(torch.cat([w for w, _ in parts]), weight.shape), mask

    def _plan(
        self, graph: Graph
    ) -> tuple[dict[str, SparsityPattern], dict[str, int], list[dict[str, Any]]]:
        """Which weights get which pattern, each layer's groups; a row for every layer that
        does not get one."""
        plan: dict[str, SparsityPattern] = {}
        groups: dict[str, int] = {}
        rows: list[dict[str, Any]] = []
        for node in weight_layers(graph, self.layers):
            target = str(node.args[1].target)  # type: ignore[union-attr]
            if target in plan:
                continue
            shape = tuple(graph.tensor(target).shape)
            groups[target] = conv_spec(node, shape).groups if len(shape) > 2 else 1
            outcome = self.weight_pattern(target, shape, groups[target])
            if isinstance(outcome, str):
                rows.append(layer_row(target, shape, outcome))
            else:
                plan[target] = outcome
        if "conv" in self.layers:
            rows += [
                layer_row(n.name, (), f"{n.target} is not sparsified (conv1d and conv2d only)")
                for n in graph.module.graph.nodes
                if n.op == "call_function" and n.target in _OTHER_CONVS
            ]
        return plan, groups, rows

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        plan, groups, rows = self._plan(graph)
        stages: int | None = None
        peak_bytes: int | None = None
        if self.method == "sparsegpt":
            results, stages, peak_bytes = self._sparsegpt(graph, am, plan, groups)
        else:
            stats = (
                am.get(LayerInputStats(gram=False, layers=self.layers))
                if self.method == "wanda"
                else {}
            )
            results = {
                target: self.prune_weight(
                    target, graph.tensor(target).detach(), pattern, stats.get(target)
                )
                for target, pattern in plan.items()
            }
        with graph.rewrite(self.name) as rw:
            for target, (weight, mask) in results.items():
                rw.replace_tensor(target, weight)
                rw.set_mask(target, WeightMask(plan[target], mask))
        for target, (weight, mask) in results.items():
            note = f"{self.method}, per group ({groups[target]} groups)"
            rows.append(
                layer_row(
                    target,
                    tuple(weight.shape),
                    plan[target],
                    mask,
                    self.method if groups[target] == 1 else note,
                )
            )
        summary = SparsifySummary(
            pattern=self.pattern,
            method=self.method,
            stages=stages,
            peak_calibration_bytes=peak_bytes,
            layers=rows,
        )
        # weight values and masks change, the structure does not: the channel groups survive
        return PassResult(
            changed=bool(results),
            preserved=frozenset({DependencyGroups}),
            changes=tuple(rw.changes),
            summary=summary,
        )

    def _sparsegpt(
        self,
        graph: Graph,
        am: AnalysisManager,
        plan: dict[str, SparsityPattern],
        groups: dict[str, int],
    ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int, int]:
        """Sparsify layer stage by stage; later stages see earlier stages' new weights.

        Returns the new weights and masks, the number of stages and the peak bytes held.
        """
        calibration = require_calibration(am.calibration, f"{self.name}{{method=sparsegpt}}")
        runner = StagedCalibration(
            graph, calibration, layers_per_stage=self.layers_per_stage, kinds=self.layers
        )
        results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        stages = list(runner)
        for stage in stages:
            targets = [str(n.args[1].target) for n in runner.layers(stage)]  # type: ignore[union-attr]
            targets = [t for t in targets if t in plan and t not in results]
            if targets:
                stats = runner.stats(stage, gram=True)
                for target in targets:
                    results[target] = self.prune_weight(
                        target, graph.tensor(target), plan[target], stats[target], groups[target]
                    )
                    runner.weights[target] = results[target][0]
            if stage != stages[-1]:
                runner.advance(stage)
        return results, len(stages), runner.peak_bytes
