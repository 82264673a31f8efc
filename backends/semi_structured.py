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
- the rewrite is the lowering pass `semi-structured-2-4` (`backends/lowering.py`) on a copy
  of the graph moved to the GPU: the graph that the artifact saves is not changed; should
  the pass fail, the copy keeps the reference kernels and the note says why.

Example:
    module, notes = lower_2_4(graph, torch.device("cuda"), BackendOptions())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.sparse import SparseSemiStructuredTensorCUTLASS

from sparsec.errors import SparsecError
from sparsec.ops import from_nm
from sparsec.pipeline import PassResult, RewritePass, pass_dataclass, register

from .lowering import run_lowering

if TYPE_CHECKING:
    from sparsec.ir import Graph
    from sparsec.pipeline import AnalysisManager

    from .base import BackendOptions

__all__ = ["SemiStructured24", "device_reason", "layer_reason", "lower_2_4", "two_four_nodes"]

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


def _readers(module: fx.GraphModule, target: str) -> list[fx.Node]:
    return [n for n in module.graph.nodes if n.op == "get_attr" and n.target == target]


@register
@pass_dataclass
class SemiStructured24(RewritePass):
    """Eligible 2:4 layers multiply with a semi-structured weight (module rules).

    A lowering pass of the torch backend on "cuda", run on a copy of the graph already on
    the device. `convert` turns a dense weight into the tensor `F.linear` multiplies with
    (None: torch's conversion, which needs a GPU; tests pass a stand-in).
    """

    name: ClassVar[str] = "semi-structured-2-4"
    convert: Any = None

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        convert: Converter = self.convert or _convert
        module = graph.module
        notes = []
        with graph.rewrite(self.name) as rw:
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
                weight = convert(from_nm(values, indices, 2, 4))
                name = rw.add_tensor(f"_sparsec_semi_structured_{index}", weight, parameter=False)
                rw.set_target(node, F.linear)
                rw.set_args(node, (x, rw.get_attr(name, before=node), bias))
                for old in (values_node, indices_node):  # free their memory on the GPU
                    if isinstance(old, fx.Node) and not old.users:
                        rw.erase(old)
                        if not _readers(module, str(old.target)):
                            rw.remove_tensor(str(old.target))
                notes.append(f"%{node.name}: 2:4 on sparse tensor cores (to_sparse_semi_structured)")
        return PassResult(bool(rw.changes), changes=tuple(rw.changes), notes=tuple(notes))


def lower_2_4(
    graph: Graph, device: torch.device, options: BackendOptions
) -> tuple[torch.nn.Module, list[str]]:
    """The module to run on `device` (a copy of `graph`'s when it moves), its eligible 2:4
    layers on sparse tensor cores, and notes on every 2:4 layer."""
    nodes = two_four_nodes(graph.module)
    reason = device_reason(device)
    lowered = graph if device.type == "cpu" else graph.copy(device)
    if nodes and reason is None:
        try:
            return lowered.module, run_lowering(lowered, [SemiStructured24()], options)
        except SparsecError as exc:  # the copy is as before the pass: reference kernels
            reason = f"the rewrite failed ({exc})"
    return lowered.module, [f"{len(nodes)} 2:4 layers ran the reference kernel: {reason}"] if nodes else []
