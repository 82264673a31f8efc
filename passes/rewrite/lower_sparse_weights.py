"""Replace sparsified linear (and 1×1 conv) layers by sparse ops carrying compressed weights.

Rules:
- candidates are `aten.linear` and `aten.conv1d`/`conv2d` nodes whose weight has a mask
  recorded by `sparsify`; others stay dense and the summary says why;
- a 1×1 conv with stride 1, no padding and groups 1 is a linear over channels: it becomes
  permute (channels last) → the sparse linear op on `weight_matrix(W)` → permute back,
  so the ONNX and `.pt2` paths are the linear ones; every other conv (k×k, strided,
  padded, grouped) has no sparse kernel: it stays dense with its mask applied (pruned
  weights zeroed again) and the summary says which rule kept it;
- `format="auto"` follows the mask's pattern: N:M → `sparsec::nm_linear`, r×c blocks →
  `sparsec::bsr_linear`, unstructured (or 1×1 blocks) → `sparsec::csr_linear`; an explicit
  format must fit the pattern (CSR fits all);
- the break-even gate (`sparsec.latency_model`, `cost_model` names the model; "auto", the
  default, is the model of the backend compile() lowers to: `backends.base.gate_latency_model`)
  keeps dense
  unless sparse is `min_speedup`× faster at `tokens` rows (a 1×1 conv's rows are its batch ×
  spatial positions); `gate="off"` lowers every candidate (for backends whose kernels the
  chosen model does not describe);
- compressed values become parameters and indices buffers on the graph module; the dense
  weight is released (replaced by an empty tensor until the Rewriter can remove tensors);
  each decision, its reason and the bytes saved go in the summary.

Example:
    pipeline(sparsify{pattern=block,block=[16,1],sparsity=0.9},lower-sparse-weights{gate=off})
    pipeline(sparsify{pattern=nm,layers=[linear,conv]},lower-sparse-weights{gate=off})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import pydantic
import torch
import torch.fx as fx
from pydantic import Field

from sparsec.ir import Graph
from sparsec.latency_model import (
    Decision,
    SparseFormat,
    decide,
    get_latency_model,
    known_latency_models,
)
from sparsec.ops.masks import WeightMask, recorded_masks, weight_matrix
from sparsec.ops.sparse_formats import FORMATS, natural_format
from sparsec.passes.analysis.layer_input_stats import conv_spec, weight_layers
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["LowerSparseWeights", "LowerSparseWeightsSummary"]

def _dense_conv_reason(node: fx.Node, shape: tuple[int, ...]) -> str | None:
    """Why a conv cannot become a sparse linear over channels, or None if it can."""
    spec = conv_spec(node, shape)
    if not all(k == 1 for k in spec.kernel):
        return f"{'×'.join(map(str, spec.kernel))} conv: no sparse conv kernel"
    if spec.groups > 1:
        return f"grouped 1×1 conv (groups={spec.groups}): no grouped sparse kernel"
    if not spec.is_pointwise:
        return (
            f"1×1 conv with stride {list(spec.stride)}, padding {list(spec.padding)}: "
            "not a linear over channels"
        )
    return None


def _channels_last(rank: int, spatial: int) -> tuple[list[int], list[int]]:
    """The permutation moving a conv input's channel axis last, and its inverse."""
    channels = rank - spatial - 1  # an unbatched input has no batch axis
    order = [*(i for i in range(rank) if i != channels), channels]
    return order, [order.index(i) for i in range(rank)]


@dataclass(frozen=True, kw_only=True)
class LowerSparseWeightsSummary(PassSummary):
    """What `lower-sparse-weights` did: a row per candidate layer (format, the gate's reason
    and timings), how many were lowered, and the weight bytes before and after compression."""

    layers: list[dict[str, Any]]
    lowered: int
    dense_weight_bytes: int
    compressed_weight_bytes: int


@register
@pass_dataclass
class LowerSparseWeights(RewritePass):
    """Carry sparsified linear and 1×1 conv weights as compressed sparse ops where that pays."""

    name: ClassVar[str] = "lower-sparse-weights"
    # it does keep outputs, but NumericCheck compares with the *input model*, which an
    # earlier sparsify already changed; tests check lowered == masked dense instead
    preserves_numerics: ClassVar[bool] = False
    format: Literal["auto", "csr", "bsr", "nm"] = "auto"
    gate: Literal["measured", "off"] = "measured"
    cost_model: str = "auto"
    min_speedup: Annotated[float, Field(gt=0.0)] = 1.0
    tokens: Annotated[int, Field(ge=1)] = 128

    @pydantic.field_validator("cost_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value != "auto" and value not in known_latency_models():
            raise ValueError(
                f"unknown cost model {value!r}; known: auto, {', '.join(known_latency_models())}"
            )
        return value

    def choose_format(self, mask: WeightMask) -> SparseFormat | str:
        """The format for a layer, or the reason none fits."""
        if self.format == "auto":
            return natural_format(mask.pattern).name  # type: ignore[return-value]
        if FORMATS[self.format].fits(mask.pattern):
            return self.format
        return f"format {self.format} does not fit a {mask.pattern} mask (use auto or csr)"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        masks = recorded_masks(graph.module)
        # compile() resolves "auto" for its backend; run alone, the pass uses the reference
        model = get_latency_model("reference" if self.cost_model == "auto" else self.cost_model)()
        rows: list[dict[str, Any]] = []
        lowered: list[tuple[fx.Node, SparseFormat, WeightMask]] = []
        kept_dense: dict[str, WeightMask] = {}
        for node in weight_layers(graph, ("linear", "conv")):
            target = str(node.args[1].target)  # type: ignore[union-attr]
            shape = tuple(graph.tensor(target).shape)
            mask = masks.get(target)
            if mask is None:
                rows.append(
                    {
                        "layer": target,
                        "format": "dense",
                        "reason": "no sparsity mask recorded (run sparsify first)",
                    }
                )
                continue
            conv_reason = _dense_conv_reason(node, shape) if len(shape) > 2 else None
            if conv_reason is not None:
                kept_dense[target] = mask
                rows.append(
                    {
                        "layer": target,
                        "format": "dense",
                        "reason": f"{conv_reason}; kept dense with its mask",
                    }
                )
                continue
            shape = tuple(weight_matrix(graph.tensor(target)).shape)
            fmt = self.choose_format(mask)
            if fmt not in FORMATS:
                rows.append({"layer": target, "format": "dense", "reason": fmt})
                continue
            if self.gate == "off":
                decision = Decision(
                    target, fmt, mask.pattern.target_sparsity, None, None, "gate off"
                )  # type: ignore[arg-type]
            else:
                decision = decide(
                    model,
                    target,
                    fmt,
                    shape,
                    mask.pattern,  # type: ignore[arg-type]
                    tokens=self.tokens,
                    min_speedup=self.min_speedup,
                )
            rows.append(
                {
                    "layer": target,
                    "format": decision.format,
                    "reason": decision.reason,
                    "dense_ms": decision.dense_ms,
                    "sparse_ms": decision.sparse_ms,
                }
            )
            if decision.format != "dense":
                lowered.append((node, fmt, mask))  # type: ignore[arg-type]
        dense_bytes = sparse_bytes = 0
        # read before rewriting: an input may become a new node (an earlier 1×1 conv's permute)
        ranks = {node: node.args[0].meta["val"].dim() for node, _, _ in lowered}  # type: ignore[union-attr]
        with graph.rewrite(self.name) as rw:
            for target, mask in kept_dense.items():
                weight = graph.tensor(target).detach()
                if bool(weight[~mask.mask].any()):  # e.g. trained without preserve_masks
                    rw.replace_tensor(target, weight * mask.mask)
            for node, fmt, mask in lowered:
                weight_node = node.args[1]
                target = str(weight_node.target)  # type: ignore[union-attr]
                weight = graph.tensor(target).detach()
                matrix = weight_matrix(weight)
                sparse = FORMATS[fmt]
                tensors = sparse.compress(matrix, weight_matrix(mask.mask), mask.pattern)
                names = [
                    rw.add_tensor(f"{target}.{part}", t, parameter=t.is_floating_point())
                    for part, t in zip(sparse.parts, tensors, strict=True)
                ]
                attrs = [rw.get_attr(name, before=node) for name in names]
                x = node.args[0]
                if weight.dim() > 2:  # a 1×1 conv: the same linear over channels-last x
                    to_last, back = _channels_last(ranks[node], weight.dim() - 2)
                    x = rw.insert_call(torch.ops.aten.permute.default, (x, to_last), before=node)
                bias = node.args[2] if len(node.args) > 2 else None
                shape = (int(matrix.shape[0]), int(matrix.shape[1]))
                args = sparse.call_args(x, attrs, bias, shape, mask.pattern)
                call = rw.insert_call(sparse.op, args, before=node)
                if weight.dim() > 2:
                    call = rw.insert_call(torch.ops.aten.permute.default, (call, back), before=node)
                rw.replace_uses(node, call)
                rw.erase(node)
                dense_bytes += weight.numel() * weight.element_size()
                sparse_bytes += sum(t.numel() * t.element_size() for t in tensors)
                if not weight_node.users:  # type: ignore[union-attr]
                    rw.erase(weight_node)  # type: ignore[arg-type]
                    if not any(
                        n.op == "get_attr" and n.target == target for n in graph.module.graph.nodes
                    ):
                        rw.replace_tensor(target, weight.new_empty(0))
                        rw.drop_mask(target)
        summary = LowerSparseWeightsSummary(
            layers=rows,
            lowered=len(lowered),
            dense_weight_bytes=dense_bytes,
            compressed_weight_bytes=sparse_bytes,
        )
        return PassResult(changed=bool(rw.changes), changes=tuple(rw.changes), summary=summary)
