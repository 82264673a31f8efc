"""Partitioned execution: our TVM kernels for the sparse linears, torch for the dense remainder.

Why: untuned TVM dense code is 25–110× slower than ONNX Runtime here, while the sparse
linears are where the time of a sparsified model goes; so the dense ops (attention,
norms, activations, dense linears) stay with torch's tuned CPU kernels and every sparse
linear calls a TVM kernel in place, zero-copy through DLPack.

Rules:
- every call of a sparse op (`importer.SPARSE_OPS`) in the graph becomes a call of the
  compiled kernel for its (out, in, r, c); one library holds every distinct kernel;
- the artifact is `program.pt2` + `weights.safetensors` (the pruned program, pickle-free,
  as the torch backend writes it) and `tvm_kernels.so`; loading rewires the loaded program.

Example:
    executable = PartitionedExecutable.build(graph.module, graph.export_program, target, 2)
    y = executable(x)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import tvm
from torch.export import ExportedProgram
from tvm.target import Target

from sparsec.errors import BackendError

from ..torch_backend import PROGRAM_FILE, WEIGHTS_FILE, save_program
from .importer import SPARSE_OPS, kernel_for
from .kernels import BsrShape
from .relax_executable import compile_module
from .target import target_record
from .threads import set_threads

__all__ = [
    "KERNELS_FILE",
    "PartitionedExecutable",
    "kernel_arrays",
    "sparse_linear_shape",
    "sparse_nodes",
]

KERNELS_FILE = "tvm_kernels.so"


def sparse_nodes(module: fx.GraphModule) -> list[fx.Node]:
    """The calls of sparsec's sparse linear ops in `module`, in graph order."""
    return [
        node
        for node in module.graph.nodes
        if node.op == "call_function" and getattr(node.target, "__name__", "") in SPARSE_OPS
    ]


def _tensor_shape(node: Any) -> tuple[int, ...]:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        raise BackendError(f"%{node}: a sparse op's weight arrays need shapes in node.meta['val']")
    return tuple(int(dim) for dim in value.shape)


def sparse_linear_shape(node: fx.Node) -> BsrShape:
    """The (out, in, r, c) of a sparse linear call; N:M and CSR are 1×1 blocks."""
    if node.target.__name__ == "nm_linear.default":  # type: ignore[union-attr]
        out_features, kept = _tensor_shape(node.args[1])
        n, m = int(node.args[4]), int(node.args[5])  # type: ignore[arg-type]
        return BsrShape(out_features, kept * m // n, 1, 1)
    values = _tensor_shape(node.args[1])
    r, c = (values[1], values[2]) if len(values) == 3 else (1, 1)
    return BsrShape(int(node.args[5]), int(node.args[6]), r, c)  # type: ignore[arg-type]


def kernel_arrays(
    values: torch.Tensor, cols: torch.Tensor, shape: BsrShape
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values as [nnz, r, c] and cols, compact; an empty weight gets one unread zero block.

    Why: torch hands TVM size-0 tensors with strides that TVM's argument check rejects as
    not compact; with crow all zeros the kernel never reads the stand-in block.
    """
    if values.numel() == 0:
        return torch.zeros(1, shape.r, shape.c, dtype=values.dtype), torch.zeros(
            1, dtype=torch.int64
        )
    return values.reshape(-1, shape.r, shape.c).contiguous(), cols.contiguous()


class _SparseLinear:
    """Stands in for one sparse op call: flattens x, runs the TVM kernel, restores x's dims."""

    def __init__(
        self, kernel: Callable[..., None], shape: BsrShape, nm: tuple[int, int] | None
    ) -> None:
        self._kernel = kernel
        self._shape = shape
        self._nm = nm is not None
        self._n, self._m = nm or (1, 1)
        self._zeros = torch.zeros(shape.out_features)
        self.__name__ = f"tvm_sparse_linear_{shape.out_features}x{shape.in_features}"

    def __call__(self, x: torch.Tensor, values: torch.Tensor, *rest: Any) -> torch.Tensor:
        shape = self._shape
        if self._nm:
            indices, bias = rest[0], rest[1]
            kept = indices.shape[1]
            group_base = torch.arange(kept, dtype=torch.int64) // self._n * self._m
            cols = (indices.to(torch.int64) + group_base).reshape(-1)
            crow = torch.arange(shape.out_features + 1, dtype=torch.int64) * indices.shape[1]
        else:
            cols, crow, bias = rest[0], rest[1], rest[2]
        x2 = x.reshape(-1, shape.in_features).contiguous()
        y = torch.empty(x2.shape[0], shape.out_features, dtype=x.dtype)
        values, cols = kernel_arrays(values, cols, shape)
        self._kernel(
            x2,
            values,
            cols,
            crow.contiguous(),
            self._zeros if bias is None else bias.contiguous(),
            y,
        )
        return y.reshape(*x.shape[:-1], shape.out_features)


def _rewire(module: fx.GraphModule, library: Any, target: Target) -> fx.GraphModule:
    """A copy of `module` whose sparse op calls run the kernels of `library`."""
    module = copy.deepcopy(module)
    for node in sparse_nodes(module):
        shape = sparse_linear_shape(node)
        name, _ = kernel_for(shape, target)
        nm = (
            (int(node.args[4]), int(node.args[5]))  # type: ignore[arg-type]
            if node.target.__name__ == "nm_linear.default"  # type: ignore[union-attr]
            else None
        )
        node.target = _SparseLinear(library[name], shape, nm)
    module.recompile()
    return module


def build_kernels(module: fx.GraphModule, target: Target) -> tvm.runtime.Executable:
    """Compile one library with every distinct kernel that `module`'s sparse ops need."""
    functions = {}
    for node in sparse_nodes(module):
        name, func = kernel_for(sparse_linear_shape(node), target)
        functions[name] = func.with_attr("global_symbol", name)
    if not functions:
        raise BackendError(
            "the graph has no sparse linear ops, so partitioned TVM would run it all in torch. "
            "Fix: run a pipeline with lower-sparse-weights, or use the onnxruntime backend."
        )
    return compile_module(tvm.IRModule(functions), target)


class PartitionedExecutable:
    """torch runs the graph; each sparse linear runs its TVM kernel."""

    def __init__(
        self,
        module: fx.GraphModule,
        library: Any,
        program: Callable[[], ExportedProgram],
        record: dict[str, Any],
        threads: int | None,
    ) -> None:
        self._library = library
        self._program = program
        self._record = record
        self._threads = threads
        self._module = _rewire(module, library, Target(record["tvm_target"]))
        self.notes: list[str] = []

    @classmethod
    def build(
        cls,
        module: fx.GraphModule,
        program: Callable[[], ExportedProgram],
        target: Target,
        threads: int | None,
    ) -> PartitionedExecutable:
        """Compile the kernels `module` needs for `target` and rewire a copy of it."""
        library = build_kernels(module, target)
        return cls(module, library, program, target_record(target, "cpu"), threads)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(self._threads or previous)
        set_threads(self._threads)
        try:
            with torch.no_grad():
                return self._module(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    def files(self) -> tuple[str, ...]:
        return (KERNELS_FILE, PROGRAM_FILE, WEIGHTS_FILE)

    def save(self, directory: Path) -> dict[str, Any]:
        path = directory / KERNELS_FILE
        try:
            self._library.export_library(str(path))
        except Exception as exc:  # TVM raises its own error types from the linker call
            raise BackendError(f"TVM could not export the kernels {path}: {exc}") from exc
        save_program(self._program(), directory)
        return {
            "mode": "partitioned",
            "target": self._record,
            "threads": self._threads,
            "files": list(self.files()),
        }
