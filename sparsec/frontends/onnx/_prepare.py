"""Rewrite an ONNX node list so that layers read as torch layers before interpretation.

Rules:
- `MatMul(x, W)` with a rank-2 initializer `W` (also `MatMul(x, Transpose(W))`), and
  `Gemm(x, W, c)` with `transA=0`, become `sparsec::Linear` with a weight stored [out, in];
  an `Add` of a [out] initializer that only follows it becomes the linear's bias. The
  dependency analysis then sees `aten.linear`, as for a torch model;
- a weight with a generated name (`val_12`, `onnx::MatMul_7`) is renamed after its bias
  (`encoder.fc.bias` → `encoder.fc.weight`), so reports name the layer as the user does;
- a weight stored in another orientation than its other consumers need is copied, never
  shared with a changed layout;
- `com.microsoft::Attention` becomes three linears (query, key, value: the packed weight
  split) and a `sparsec::AttentionCore`, so heads prune like torch attention.

Example:
    nodes, tensors = prepare(nodes, tensors, graph_outputs)
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import torch

from sparsec.frontends.onnx._registry import MICROSOFT_DOMAIN, SPARSEC_DOMAIN, NodeCall

__all__ = ["GENERATED_NAME", "PREPARED_OPS", "prepare", "unsupported_form"]

# names exporters invent (torch.onnx's val_12, onnx::MatMul_7, /layer/Constant_output_0)
GENERATED_NAME = re.compile(r"^(val_\d+|onnx::.*|/.*|_v_\d+|.*_output_\d+|[a-z_]+(_\d+)?)$")


@dataclass
class _Uses:
    """Who reads each value: (node index, input position) pairs, and the graph outputs."""

    readers: dict[str, list[tuple[int, int]]]
    producers: dict[str, int]
    outputs: set[str]

    @classmethod
    def of(cls, nodes: Sequence[NodeCall | None], outputs: Sequence[str]) -> _Uses:
        readers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        producers: dict[str, int] = {}
        for index, node in enumerate(nodes):
            for position, name in enumerate(node.inputs if node else ()):
                if name:
                    readers[name].append((index, position))
            producers.update({name: index for name in (node.outputs if node else ()) if name})
        return cls(readers, producers, set(outputs))

    def only_reader(self, value: str) -> int | None:
        readers = self.readers.get(value, [])
        if value in self.outputs or len(readers) != 1:
            return None
        return readers[0][0]


class _Tensors:
    """The initializer table, with fresh names for derived copies."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def add(self, preferred: str, tensor: torch.Tensor) -> str:
        name, suffix = preferred, 1
        while name in self.tensors:
            name, suffix = f"{preferred}_{suffix}", suffix + 1
        self.tensors[name] = tensor
        return name


def _param_name(node: NodeCall, source: str, role: str, bias: str | None = None) -> str:
    """A fused layer's parameter name: the module path the exporter recorded (its shared or
    generated initializer names say nothing about the layer), else the initializer's own
    name, with a generated weight name taken from its bias (`fc.bias` → `fc.weight`)."""
    if node.scope:
        return f"{node.scope}.{role}"
    if role == "weight" and bias and GENERATED_NAME.match(source) and bias.endswith("bias"):
        return bias[: -len("bias")] + "weight"
    return source


def _linear_weight(
    node: NodeCall, nodes: list[NodeCall | None], tensors: dict[str, torch.Tensor], uses: _Uses
) -> tuple[torch.Tensor, str, int | None] | None:
    """The [out, in] weight of a MatMul/Gemm that is a linear layer, its source name, and the
    Transpose node it absorbs; None when the node is not one."""
    if node.domain or len(node.inputs) < 2:
        return None
    source = node.inputs[1]
    if node.op_type == "Gemm":
        if node.attrs.get("transA", 0) or source not in tensors or tensors[source].dim() != 2:
            return None
        weight = tensors[source] if node.attrs.get("transB", 0) else tensors[source].t()
        return weight * node.attrs.get("alpha", 1.0), source, None
    if node.op_type != "MatMul":
        return None
    if source in tensors and tensors[source].dim() == 2:
        return tensors[source].t(), source, None
    index = uses.producers.get(source)
    producer = nodes[index] if index is not None else None
    if (
        producer is not None and producer.op_type == "Transpose" and not producer.domain
        and producer.inputs[0] in tensors and tensors[producer.inputs[0]].dim() == 2
        and list(producer.attrs.get("perm", [1, 0])) == [1, 0]
        and uses.only_reader(source) is not None
    ):
        return tensors[producer.inputs[0]], producer.inputs[0], index
    return None


def _bias_of(
    index: int, node: NodeCall, nodes: list[NodeCall | None], tensors: dict[str, torch.Tensor],
    uses: _Uses, features: int,
) -> tuple[torch.Tensor | None, str | None, int | None]:
    """The bias a linear takes: Gemm's C, or the [out] initializer an Add alone adds to it."""
    if node.op_type == "Gemm":
        if len(node.inputs) > 2 and node.inputs[2]:
            c = tensors.get(node.inputs[2])
            if c is None or c.numel() != features:
                return None, None, None
            return c.reshape(features) * node.attrs.get("beta", 1.0), node.inputs[2], None
        return None, None, None
    reader = uses.only_reader(node.outputs[0])
    add = nodes[reader] if reader is not None else None
    if add is None or add.op_type != "Add" or add.domain:
        return None, None, None
    other = next((name for name in add.inputs if name != node.outputs[0]), None)
    bias = tensors.get(other) if other else None
    if bias is None or bias.numel() != features or bias.dim() > 1:
        return None, None, None
    return bias.reshape(features), other, reader


def _gemm_is_general(node: NodeCall, tensors: dict[str, torch.Tensor]) -> bool:
    """A Gemm whose C is not a bias vector stays a Gemm."""
    return node.op_type == "Gemm" and len(node.inputs) > 2 and bool(node.inputs[2]) and (
        node.inputs[2] not in tensors
    )


def _fuse_linears(nodes: list[NodeCall | None], table: _Tensors, outputs: Sequence[str]) -> None:
    tensors = table.tensors
    # computed once: a fusion only removes the Add and Transpose it absorbs, whose own
    # entries no later query reads
    uses = _Uses.of(nodes, outputs)
    for index, node in enumerate(nodes):
        if node is None or _gemm_is_general(node, tensors):
            continue
        found = _linear_weight(node, nodes, tensors, uses)
        if found is None:
            continue
        weight, source, transpose = found
        bias, bias_source, add = _bias_of(index, node, nodes, tensors, uses, weight.shape[0])
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] and bias is None:
            continue
        weight_name = table.add(_param_name(node, source, "weight", bias_source), weight.contiguous().clone())
        bias_name = (
            table.add(_param_name(node, bias_source, "bias"), bias.clone())
            if bias is not None and bias_source else None
        )
        result = nodes[add].outputs if add is not None else node.outputs  # type: ignore[union-attr]
        nodes[index] = NodeCall(
            node.name, SPARSEC_DOMAIN, "Linear", (node.inputs[0],), tuple(result[:1]),
            {"weight": weight_name, "bias": bias_name},
        )
        for absorbed in (add, transpose):
            if absorbed is not None:
                nodes[absorbed] = None


# ops the preparation rewrites into handled ones (so they need no handler of their own)
PREPARED_OPS = {(MICROSOFT_DOMAIN, "Attention")}


def unsupported_form(node: onnx.NodeProto, initializers: set[str]) -> str | None:
    """Why a prepared op cannot be imported in this form, or None."""
    if (node.domain, node.op_type) != (MICROSOFT_DOMAIN, "Attention"):
        return None
    if len(node.input) < 2 or node.input[1] not in initializers:
        return "its packed QKV weights are not an initializer"
    if len(node.input) > 4 and any(node.input[4:]):
        return "past key/value state, attention bias or past length inputs are not supported"
    if len(node.output) > 1 and any(node.output[1:]):
        return "its present key/value output is not supported"
    return None


def _attention_nodes(node: NodeCall, table: _Tensors) -> list[NodeCall]:
    """`com.microsoft::Attention` → three `sparsec::Linear` and a `sparsec::AttentionCore`."""
    tensors = table.tensors
    weights = tensors[node.inputs[1]]
    bias = tensors.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    sizes = list(node.attrs.get("qkv_hidden_sizes") or [weights.shape[1] // 3] * 3)
    parts = torch.split(weights, sizes, dim=1)
    biases: Sequence[torch.Tensor | None] = torch.split(bias, sizes) if bias is not None else (None,) * 3
    projections = []
    for role, part, part_bias in zip(("query", "key", "value"), parts, biases, strict=True):
        weight_name = table.add(f"{node.inputs[1]}.{role}.weight", part.t().contiguous().clone())
        bias_name = (
            table.add(f"{node.inputs[1]}.{role}.bias", part_bias.clone()) if part_bias is not None else None
        )
        projections.append(
            NodeCall(f"{node.name}/{role}", SPARSEC_DOMAIN, "Linear", (node.inputs[0],),
                     (f"{node.name}/{role}",), {"weight": weight_name, "bias": bias_name})
        )
    mask = node.inputs[3] if len(node.inputs) > 3 else ""
    kept = ("num_heads", "unidirectional", "mask_filter_value", "scale")
    core = NodeCall(
        node.name, SPARSEC_DOMAIN, "AttentionCore",
        (*(p.outputs[0] for p in projections), mask), node.outputs[:1],
        {key: value for key, value in node.attrs.items() if key in kept},
    )
    return [*projections, core]


# parameter roles by input position of the layers whose initializers get module-path names
_ROLES = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "BatchNormalization": {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"},
    "LayerNormalization": {1: "weight", 2: "bias"},
    "InstanceNormalization": {1: "weight", 2: "bias"},
    "GroupNormalization": {1: "weight", 2: "bias"},
}


def _name_layer_params(nodes: list[NodeCall | None], table: _Tensors, outputs: Sequence[str]) -> None:
    """Initializers with generated names that one layer alone reads take the layer's path."""
    uses = _Uses.of(nodes, outputs)
    for index, node in enumerate(nodes):
        roles = _ROLES.get(node.op_type, {}) if node is not None and not node.domain else {}
        if node is None or not node.scope or not roles:
            continue
        inputs = list(node.inputs)
        for position, role in roles.items():
            source = inputs[position] if position < len(inputs) else ""
            if source in table.tensors and GENERATED_NAME.match(source) and uses.only_reader(source) == index:
                inputs[position] = table.add(f"{node.scope}.{role}", table.tensors.pop(source))
        nodes[index] = dataclasses.replace(node, inputs=tuple(inputs))


def prepare(
    nodes: Sequence[NodeCall], tensors: dict[str, torch.Tensor], outputs: Sequence[str]
) -> tuple[list[NodeCall], dict[str, torch.Tensor]]:
    """The node list with linears fused and attention split; the tensors they need."""
    table = _Tensors(dict(tensors))
    expanded: list[NodeCall | None] = []
    for node in nodes:
        if node.domain == MICROSOFT_DOMAIN and node.op_type == "Attention":
            expanded.extend(_attention_nodes(node, table))
        else:
            expanded.append(node)
    _fuse_linears(expanded, table, outputs)
    _name_layer_params(expanded, table, outputs)
    kept = [node for node in expanded if node is not None]
    used = {name for node in kept for name in node.inputs} | set(outputs)
    used |= {str(node.attrs[key]) for node in kept for key in ("weight", "bias") if node.attrs.get(key)}
    return kept, {name: t for name, t in table.tensors.items() if name in used}
