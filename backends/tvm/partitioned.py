"""Partitioned execution: our TVM kernels for the sparse linears, torch for the dense remainder.

Why: untuned TVM dense code is 25–110× slower than ONNX Runtime here, while the sparse
linears are where the time of a sparsified model goes; so the dense ops (attention,
norms, activations, dense linears) stay with torch's tuned CPU kernels and every sparse
linear calls a TVM kernel in place, zero-copy through DLPack.

Rules:
- chains of sparse linears (`layout.find_chains`: up → relu/gelu? → down) run as one call
  that packs x once and hands the intermediate from the first kernel to the second in
  panel layout, bias and activation fused (`FuseSparseChains`); `build` compiles their
  kernels unless `fuse_chains=False`, and a loaded library fuses exactly when it holds
  them (so older artifacts still load, unfused);
- every other call of a sparse op (`sparse_calls.SPARSE_OPS`) becomes a call of the
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

from sparsec.errors import ArtifactError, BackendError
from sparsec.program_files import PROGRAM_FILE, WEIGHTS_FILE, save_program

from .fuse_chains import ChainCall, FuseSparseChains
from .importer import chain_layouts, kernel_for, kernel_name, kernel_operands
from .kernels import BsrShape, KernelLayout
from .relax_executable import compile_module
from .sparse_calls import (
    SparseCall,
    is_sparse_call,
    kernel_arrays,
    sparse_linear_shape,
    sparse_nodes,
)
from .target import target_record
from .threads import set_threads

__all__ = [
    "KERNELS_FILE",
    "PartitionedExecutable",
    "build_kernels",
    "kernel_arrays",
    "sparse_linear_shape",
    "sparse_nodes",
]

KERNELS_FILE = "tvm_kernels.so"


class _Operands:
    """A sparse call's kernel operands in its kernel's order, converted once per weight.

    Why: the weight arrays are the module's constants; converting them on every call (N:M
    columns, slab-major order) costs as much as a small layer's kernel. The arguments are
    held, so a hit is the same tensors at the same version.
    """

    def __init__(self, call: SparseCall, target: Target, layout: KernelLayout | None) -> None:
        self.call = call
        self._target = target
        self._layout = layout
        self._args: tuple[Any, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._operands: tuple[Any, ...] = ()

    def __call__(
        self, *args: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        versions = tuple(arg._version for arg in args if isinstance(arg, torch.Tensor))
        same = len(args) == len(self._args) and all(
            a is b for a, b in zip(args, self._args, strict=True)
        )
        if not same or versions != self._versions:
            values, cols, crow, bias = self.call.operands(*args)
            ordered = kernel_operands(
                self.call.shape, self._target, self._layout, (values, cols, crow)
            )
            self._args, self._versions, self._operands = args, versions, (*ordered, bias)
        return self._operands  # type: ignore[return-value]


class _SparseLinear:
    """Stands in for one sparse op call: flattens x, runs the TVM kernel, restores x's dims."""

    def __init__(self, kernel: Callable[..., None], call: SparseCall, target: Target) -> None:
        self._kernel = kernel
        self._operands = _Operands(call, target, None)
        self._zeros = torch.zeros(call.shape.out_features)
        self.__name__ = f"tvm_sparse_linear_{call.shape.out_features}x{call.shape.in_features}"

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        shape = self._operands.call.shape
        values, cols, crow, bias = self._operands(*args)
        x2 = x.reshape(-1, shape.in_features).contiguous()
        y = torch.empty(x2.shape[0], shape.out_features, dtype=x.dtype)
        self._kernel(x2, values, cols, crow, self._zeros if bias is None else bias, y)
        return y.reshape(*x.shape[:-1], shape.out_features)


class _SparseChain:
    """Stands in for a fused chain: the first kernel writes the second's panel, which reads it."""

    def __init__(
        self,
        call: ChainCall,
        kernels: tuple[Callable[..., None], Callable[..., None]],
        layouts: tuple[KernelLayout, KernelLayout],
        target: Target,
    ) -> None:
        if layouts[0].output_tile is None:
            raise BackendError(f"{call.__name__}: the first kernel of a chain writes no panel")
        self._call = call
        self._first, self._second = kernels
        self._tile = layouts[0].output_tile
        self._operands = (
            _Operands(call.first, target, layouts[0]),
            _Operands(call.second, target, layouts[1]),
        )
        self._zeros = (
            torch.zeros(call.first.shape.out_features),
            torch.zeros(call.second.shape.out_features),
        )
        self.__name__ = f"tvm_{call.__name__}"

    def __call__(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        first_args, second_args = self._call.split(args)
        first, second, tile = self._call.first.shape, self._call.second.shape, self._tile
        x2 = x.reshape(-1, first.in_features).contiguous()
        tokens = x2.shape[0]
        panel = torch.empty((tokens + tile - 1) // tile, first.out_features, tile, dtype=x.dtype)
        values, cols, crow, bias = self._operands[0](*first_args)
        self._first(x2, values, cols, crow, self._zeros[0] if bias is None else bias, panel)
        y = torch.empty(tokens, second.out_features, dtype=x.dtype)
        values, cols, crow, bias = self._operands[1](*second_args)
        self._second(panel, values, cols, crow, self._zeros[1] if bias is None else bias, y)
        return y.reshape(*x.shape[:-1], second.out_features)


def _chain_kernels(
    call: ChainCall, target: Target
) -> tuple[tuple[str, BsrShape, KernelLayout], tuple[str, BsrShape, KernelLayout]]:
    """(name, shape, layout) of a chain's first and second kernel."""
    first, second = chain_layouts(call.second.shape, call.activation, target)
    return (
        (kernel_name(call.first.shape, target, first), call.first.shape, first),
        (kernel_name(call.second.shape, target, second), call.second.shape, second),
    )


def _fused_copy(module: fx.GraphModule, fuse_chains: bool) -> tuple[fx.GraphModule, list[str]]:
    """A copy of `module`, its chains fused when asked, and notes saying what happened."""
    module = copy.deepcopy(module)
    if not fuse_chains:
        return module, []
    result = FuseSparseChains().run(module)
    notes = []
    if result.changed:
        names = sorted({node.target.__name__ for node in result.fused})  # type: ignore[union-attr]
        count = len(result.fused)
        notes.append(
            f"{count} chain{'s' * (count != 1)} of sparse linears fused, activations kept in "
            f"panel layout between their kernels: {', '.join(names)}"
        )
    notes += [f"not fused: {refusal}" for refusal in result.refusals]
    return module, notes


def build_kernels(
    module: fx.GraphModule, target: Target, fuse_chains: bool = True
) -> tvm.runtime.Executable:
    """Compile one library with every distinct kernel that `module`'s sparse ops need."""
    module, _ = _fused_copy(module, fuse_chains)
    functions = {}
    for node in module.graph.nodes:
        if isinstance(node.target, ChainCall):
            for name, shape, layout in _chain_kernels(node.target, target):
                if name not in functions:
                    functions[name] = kernel_for(shape, target, layout)[1]
        elif is_sparse_call(node):
            shape = sparse_linear_shape(node)
            name = kernel_name(shape, target)
            if name not in functions:
                functions[name] = kernel_for(shape, target)[1]
    if not functions:
        raise BackendError(
            "the graph has no sparse linear ops, so partitioned TVM would run it all in torch. "
            "Fix: run a pipeline with lower-sparse-weights, or use the onnxruntime backend."
        )
    functions = {name: func.with_attr("global_symbol", name) for name, func in functions.items()}
    return compile_module(tvm.IRModule(functions), target)


def _implements(library: Any, name: str) -> bool:
    module = library.jit() if isinstance(library, tvm.runtime.Executable) else library
    return bool(module.implements_function(name, True))


def _kernel(library: Any, name: str) -> Callable[..., None]:
    if not _implements(library, name):
        raise ArtifactError(
            f"the kernel library has no {name}: it was built by another version of sparsec, "
            "whose kernels read their weights in another order. Fix: rebuild the artifact."
        )
    return library[name]  # type: ignore[no-any-return]


def _rewire(
    module: fx.GraphModule, library: Any, target: Target
) -> tuple[fx.GraphModule, list[str]]:
    """A copy of `module` whose sparse op calls run the kernels of `library`, and notes.

    Chains are fused exactly when `library` holds their kernels (module rules).
    """
    fused, notes = _fused_copy(module, True)
    chains = [node for node in fused.graph.nodes if isinstance(node.target, ChainCall)]
    present = [
        all(_implements(library, name) for name, _, _ in _chain_kernels(node.target, target))
        for node in chains
    ]
    if chains and not all(present):
        if any(present):
            raise ArtifactError(
                "the kernel library holds the fused kernels of some sparse chains but not of "
                f"others ({sum(present)} of {len(chains)}). Fix: rebuild the artifact."
            )
        fused, _ = _fused_copy(module, False)
        notes = ["sparse chains not fused: the kernel library was built without chain kernels"]
    for node in fused.graph.nodes:
        if isinstance(node.target, ChainCall):
            (first, _, first_layout), (second, _, second_layout) = _chain_kernels(
                node.target, target
            )
            kernels = (_kernel(library, first), _kernel(library, second))
            layouts = (first_layout, second_layout)
            node.target = _SparseChain(node.target, kernels, layouts, target)
        elif is_sparse_call(node):
            call = SparseCall.of(node)
            kernel = _kernel(library, kernel_name(call.shape, target))
            node.target = _SparseLinear(kernel, call, target)
    fused.recompile()
    return fused, notes


class PartitionedExecutable:
    """torch runs the graph; each sparse linear (or chain of two) runs its TVM kernels."""

    def __init__(
        self,
        module: fx.GraphModule,
        library: Any,
        program: Callable[[], ExportedProgram],
        record: dict[str, Any],
        threads: int | None,
        dense_threads: int | None = None,
    ) -> None:
        self._library = library
        self._program = program
        self._record = record
        self._threads = threads
        self._dense_threads = dense_threads or threads
        self._module, self.notes = _rewire(module, library, Target(record["tvm_target"]))

    @classmethod
    def build(
        cls,
        module: fx.GraphModule,
        program: Callable[[], ExportedProgram],
        target: Target,
        threads: int | None,
        dense_threads: int | None = None,
        fuse_chains: bool = True,
    ) -> PartitionedExecutable:
        """Compile the kernels `module` needs for `target` and rewire a copy of it.

        TVM's kernels run on `threads`, torch's dense ops on `dense_threads` (None: the
        same); `fuse_chains=False` builds no chain kernels, so every sparse linear runs alone.
        """
        library = build_kernels(module, target, fuse_chains)
        record = target_record(target, "cpu")
        return cls(module, library, program, record, threads, dense_threads)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(self._dense_threads or previous)
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
            "dense_threads": self._dense_threads,
            "files": list(self.files()),
        }
