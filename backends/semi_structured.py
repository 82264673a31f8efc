"""2:4 layers on NVIDIA sparse tensor cores for the torch backend (`to_sparse_semi_structured`).

Rules:
- a `sparsec::nm_linear` call with n=2, m=4 whose weight arrays are module constants is
  rewritten to `F.linear(x, W, bias)` with W the dense weight converted to torch's
  semi-structured sparse tensor on the GPU (CUTLASS for float32, which cuSPARSELt lacks;
  torch's default backend for float16/bfloat16/int8);
- it needs a CUDA device of compute capability 8.0 or newer (sparse tensor cores) and a
  weight whose dtype and shape torch's kernels take (rows and columns multiples of the
  dtype's minimum block, e.g. 32×32 for float32); every other layer keeps the reference
  kernel, and each layer's outcome, with its reason, becomes a note in the report;
- the rewrite works on a copy: the graph module that the artifact saves is not changed.

Example:
    module, notes = accelerate_2_4(module, torch.device("cuda"))
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.sparse import SparseSemiStructuredTensorCUTLASS

from sparsec.ops import from_nm

__all__ = ["accelerate_2_4", "device_reason", "layer_reason", "two_four_nodes"]

_NM_LINEAR = torch.ops.sparsec.nm_linear.default
_MIN_CAPABILITY = (8, 0)  # Ampere: the first GPUs with sparse tensor cores
Converter = Callable[[torch.Tensor], torch.Tensor]


def two_four_nodes(module: fx.GraphModule) -> list[fx.Node]:
    """The 2:4 `nm_linear` calls of `module`, in graph order."""
    return [
        node
        for node in module.graph.nodes
        if node.op == "call_function"
        and node.target is _NM_LINEAR
        and (node.args[4], node.args[5]) == (2, 4)
    ]


def device_reason(device: torch.device) -> str | None:
    """Why `device` cannot run semi-structured 2:4 kernels, or None if it can."""
    if device.type != "cuda":
        return f"the device is {device.type}; to_sparse_semi_structured is CUDA-only"
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_CAPABILITY:
        return (
            f"the GPU has compute capability {capability[0]}.{capability[1]}; sparse tensor "
            "cores need 8.0 (Ampere) or newer"
        )
    return None


def layer_reason(out_features: int, in_features: int, dtype: torch.dtype) -> str | None:
    """Why a [out, in] weight of `dtype` cannot be semi-structured, or None if it can."""
    constraints = SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS
    if dtype not in constraints:
        return f"{dtype} has no semi-structured kernel (float32, float16, bfloat16, int8 do)"
    rows, cols = constraints[dtype].sparse_min_rows, constraints[dtype].sparse_min_cols
    if out_features % rows or in_features % cols:
        return (
            f"weight [{out_features}, {in_features}] is not a multiple of the {rows}×{cols} "
            f"block {dtype} kernels need"
        )
    return None


def _convert(weight: torch.Tensor) -> torch.Tensor:
    if weight.dtype == torch.float32:  # cuSPARSELt, torch's default when present, has no fp32
        return SparseSemiStructuredTensorCUTLASS.from_dense(weight)
    return torch.sparse.to_sparse_semi_structured(weight)


def _constant(module: fx.GraphModule, node: object) -> torch.Tensor | None:
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner, _, name = str(node.target).rpartition(".")
    tensor = getattr(module.get_submodule(owner) if owner else module, name, None)
    return tensor if isinstance(tensor, torch.Tensor) else None


def accelerate_2_4(
    module: fx.GraphModule, device: torch.device, convert: Converter = _convert
) -> tuple[fx.GraphModule, list[str]]:
    """A copy of `module` whose eligible 2:4 layers run on sparse tensor cores, and notes.

    `convert` turns a dense weight on `device` into the tensor `F.linear` multiplies with;
    tests pass a stand-in because the real conversion needs a GPU.
    """
    nodes = two_four_nodes(module)
    if not nodes:
        return module, []
    reason = device_reason(device) if convert is _convert else None
    if reason is not None:
        return module, [f"{len(nodes)} 2:4 layers ran the reference kernel: {reason}"]
    module = copy.deepcopy(module)
    notes = []
    for index, node in enumerate(two_four_nodes(module)):
        x, values_node, indices_node, bias = node.args[:4]
        values, indices = _constant(module, values_node), _constant(module, indices_node)
        if values is None or indices is None:
            notes.append(f"%{node.name}: reference kernel: its weight arrays are not constants")
            continue
        out_features, slots = values.shape
        why = layer_reason(out_features, slots * 2, values.dtype)
        if why is not None:
            notes.append(f"%{node.name}: reference kernel: {why}")
            continue
        name = f"_sparsec_semi_structured_{index}"
        module.register_buffer(name, convert(from_nm(values, indices, 2, 4).to(device)))
        with module.graph.inserting_before(node):
            weight = module.graph.get_attr(name)
            node.target = F.linear
            node.args = (x, weight, bias)
        notes.append(f"%{node.name}: 2:4 on sparse tensor cores (to_sparse_semi_structured)")
    module.graph.eliminate_dead_code()
    module.recompile()
    return module, notes
