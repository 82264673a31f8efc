"""Re-estimate BatchNorm running statistics on calibration data after pruning.

Rules:
- the graph runs over the calibration batches with every `aten.batch_norm` normalising by
  its batch's statistics, as in training mode, so each BatchNorm sees inputs normalised like
  the ones it will see once its upstream BatchNorms have new statistics;
- running_mean and running_var become the sample-weighted averages of the batch means and
  unbiased batch variances (torch's `momentum=None` cumulative average); no other tensor
  changes; a BatchNorm without running statistics is left alone;
- the summary gives, per BatchNorm, how far the mean moved and the variance changed.

Example:
    pipeline(magnitude-importance,prune-channels{ratio=0.5},recalibrate-bn)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F

from sparsec.calibration import require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._streaming import flat_inputs
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["RecalibrateBN", "RecalibrateBNSummary"]

_BATCH_NORM = torch.ops.aten.batch_norm.default


@dataclass
class _Sums:
    """Running sums of one BatchNorm's batch means and variances, weighted by samples."""

    mean: torch.Tensor | float = 0.0
    var: torch.Tensor | float = 0.0
    count: int = 0


class _BatchStatistics(fx.Interpreter):
    """Runs batch norms with batch statistics and sums those statistics per node."""

    def __init__(self, module: fx.GraphModule, sums: dict[str, _Sums]) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.sums = sums

    def run_node(self, n: fx.Node) -> Any:
        if n.name not in self.sums:
            return super().run_node(n)
        args, _ = self.fetch_args_kwargs_from_env(n)
        x, weight, bias, eps = args[0], args[1], args[2], args[7]
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        entry = self.sums[n.name]
        entry.mean = entry.mean + x.double().mean(dims) * count
        entry.var = entry.var + x.double().var(dims, correction=1 if count > 1 else 0) * count
        entry.count += count
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)


@dataclass(frozen=True, kw_only=True)
class RecalibrateBNSummary(PassSummary):
    """What `recalibrate-bn` did: a row per recalibrated BatchNorm (largest mean shift in
    old standard deviations, mean ratio of new to old variance)."""

    batch_norms: list[dict[str, object]]


@register
@pass_dataclass
class RecalibrateBN(RewritePass):
    """Replace BatchNorm running statistics by estimates on calibration data."""

    name: ClassVar[str] = "recalibrate-bn"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        calibration = require_calibration(am.calibration, self.name)
        norms = [
            n
            for n in graph.nodes
            if n.target is _BATCH_NORM
            and all(isinstance(a, fx.Node) and a.op == "get_attr" for a in n.args[3:5])
        ]
        if not norms:
            return PassResult(
                changed=False, preserved=frozenset(), summary=RecalibrateBNSummary(batch_norms=[])
            )
        sums = {n.name: _Sums() for n in norms}
        interpreter = _BatchStatistics(graph.module, sums)
        with torch.no_grad():
            for args, kwargs in calibration:
                interpreter.run(
                    *flat_inputs(graph.module, args, kwargs), enable_io_processing=False
                )
        rows: list[dict[str, object]] = []
        with graph.rewrite(self.name) as rw:
            for node in norms:
                entry = sums[node.name]
                if entry.count == 0:
                    continue
                mean_target, var_target = str(node.args[3].target), str(node.args[4].target)  # type: ignore[union-attr]
                old_mean, old_var = graph.tensor(mean_target), graph.tensor(var_target)
                mean = (entry.mean / entry.count).to(old_mean.dtype)  # type: ignore[union-attr]
                var = (entry.var / entry.count).to(old_var.dtype)  # type: ignore[union-attr]
                shift = float(((mean - old_mean).abs() / old_var.sqrt().clamp_min(1e-12)).max())
                ratio = float((var / old_var.clamp_min(1e-12)).mean())
                rw.replace_tensor(mean_target, mean)
                rw.replace_tensor(var_target, var)
                rows.append(
                    {
                        "layer": mean_target.rsplit(".", 1)[0],
                        "max_mean_shift_in_std": round(shift, 4),
                        "mean_var_ratio": round(ratio, 4),
                    }
                )
        # only BN statistics change: the channel groups survive
        return PassResult(
            changed=bool(rows),
            preserved=frozenset({DependencyGroups}),
            summary=RecalibrateBNSummary(batch_norms=rows),
        )
