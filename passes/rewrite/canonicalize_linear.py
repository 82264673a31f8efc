"""Canonicalize matrix products with a weight into `aten.linear`.

GPT-2's `Conv1D` traces as `addmm(bias, x, W)` with `W` stored `[in, out]`; later passes
(sparsify, lower-sparse-weights, backends) then see one form of weight layer.

Rules:
- `addmm(bias, x, W)` and `mm(x, W)` whose `W` is a 2-D parameter read only by such products
  become `linear(x, Wᵀ, bias)`, and the parameter is replaced by its transpose (ties kept:
  every alias of the tensor is switched together);
- anything else (an activation as `W`, a weight also read elsewhere, `beta`/`alpha` != 1)
  is left as it is;
- it only restructures: the pass manager checks that outputs stay allclose.

Example:
    pipeline(canonicalize-linear,sparsify{pattern=nm},lower-sparse-weights)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx

from sparsec.ir import Graph
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["CanonicalizeLinear", "CanonicalizeLinearSummary"]

aten = torch.ops.aten
_PRODUCTS = (aten.addmm.default, aten.mm.default)


def _weight(node: fx.Node) -> fx.Node | None:
    """The get_attr weight of a canonicalizable product, or None."""
    if node.target is aten.addmm.default:
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1 or len(node.args) != 3:
            return None
        weight = node.args[2]
    else:
        weight = node.args[1]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
        return None
    return weight


@dataclass(frozen=True, kw_only=True)
class CanonicalizeLinearSummary(PassSummary):
    """What `canonicalize-linear` did: how many products became `aten.linear`."""

    converted: int


@register
@pass_dataclass
class CanonicalizeLinear(RewritePass):
    """Turn `addmm`/`mm` with a parameter weight into `linear` (see module docstring)."""

    name: ClassVar[str] = "canonicalize-linear"
    preserves_numerics: ClassVar[bool] = True

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        readers: dict[str, list[fx.Node]] = {}
        for node in graph.nodes:
            for arg in node.all_input_nodes:
                if arg.op == "get_attr":
                    readers.setdefault(str(arg.target), []).append(node)
        candidates: dict[str, list[fx.Node]] = {}
        for node in graph.nodes:
            if node.op != "call_function" or node.target not in _PRODUCTS:
                continue
            weight = _weight(node)
            if weight is None or graph.tensor(str(weight.target)).dim() != 2:
                continue
            candidates.setdefault(str(weight.target), []).append(node)
        # a weight is transposed only if every reader of every alias is a candidate product
        by_tensor: dict[int, list[str]] = {}
        for target in readers:
            by_tensor.setdefault(id(graph.tensor(target)), []).append(target)
        convertible = [
            targets for targets in by_tensor.values()
            if all(t in candidates and len(candidates[t]) == len(readers[t]) for t in targets)
        ]
        if not convertible:
            return PassResult(changed=False, preserved=frozenset())
        with graph.rewrite(self.name) as rw:
            for targets in convertible:
                first, *aliases = targets
                rw.replace_tensor(first, graph.tensor(first).detach().t().contiguous())
                for alias in aliases:
                    rw.share_tensor(alias, first)
                for target in targets:
                    for node in candidates[target]:
                        if node.target is aten.addmm.default:
                            bias, x, weight = node.args
                            rw.set_args(node, (x, weight, bias), {})
                        else:
                            rw.set_args(node, (node.args[0], node.args[1]), {})
                        rw.set_target(node, aten.linear.default)
        converted = sum(len(candidates[t]) for targets in convertible for t in targets)
        return PassResult(changed=True, summary=CanonicalizeLinearSummary(converted=converted))
