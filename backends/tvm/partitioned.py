"""Partitioned execution: our TVM kernels for the sparse linears, torch for the dense remainder.

Why: untuned TVM dense code is 25–110× slower than ONNX Runtime here, while the sparse
linears are where the time of a sparsified model goes; so the dense ops (attention,
norms, activations, dense linears) stay with torch's tuned CPU kernels and every sparse
linear calls a TVM kernel in place, zero-copy through DLPack.

Rules:
- lowering is two passes on a copy of the graph (`backends/lowering.py`): chains of sparse
  linears (`fuse_chains.find_chains`: up → relu/gelu? → down) become one call that packs x
  once and hands the intermediate from the first kernel to the second in panel layout,
  bias and activation fused (`fuse-sparse-chains`), then `bind-tvm-kernels` points every
  sparse call and chain at its compiled kernel;
- `build` compiles the chain kernels unless `fuse_chains=False`, and a loaded library
  fuses exactly when it holds them (so older artifacts still load, unfused);
- every other call of a sparse op (`sparse_calls.SPARSE_OPS`) calls the compiled kernel
  for its (out, in, r, c); one library holds every distinct kernel;
- the artifact is `program.pt2` + `weights.safetensors` (the unlowered program,
  pickle-free, as the torch backend writes it) and `tvm_kernels.so`; loading lowers the
  loaded program again against the library.

Example:
    executable = PartitionedExecutable.build(graph, target, threads=2)
    y = executable(x)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.fx as fx
import tvm
from torch._subclasses.fake_tensor import is_fake
from torch.export import ExportedProgram
from tvm.target import Target

from sparsec.errors import ArtifactError, BackendError
from sparsec.parallel import torch_threads
from sparsec.pipeline import PassResult, RewritePass, pass_dataclass, register
from sparsec.program_files import PROGRAM_FILE, WEIGHTS_FILE, save_program

from ..base import BackendOptions
from ..lowering import run_lowering
from .fuse_chains import ChainCall, FuseSparseChains, find_chains
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

if TYPE_CHECKING:
    from sparsec.ir import Graph
    from sparsec.pipeline import AnalysisManager

__all__ = [
    "KERNELS_FILE",
    "BindTvmKernels",
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
        if is_fake(x):  # shape propagation: the op this call stands in for says the shape
            return torch.as_tensor(self._operands.call.format.op(x, *args))
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
        if is_fake(x):  # shape propagation: the chain's reference ops say the shape
            return self._call(x, *args)
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


def build_kernels(module: fx.GraphModule, target: Target) -> tvm.runtime.Executable:
    """Compile one library with every distinct kernel that `module`'s sparse calls and fused
    chains need."""
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


@register
@pass_dataclass
class BindTvmKernels(RewritePass):
    """Each sparse call, and each fused chain, calls its compiled kernel in `library`.

    A lowering pass: the graph still propagates shapes (on fake tensors the stand-ins run the
    reference ops), but runs the TVM kernels on real ones. `library` and `target` are
    runtime objects, not options a pipeline can write.
    """

    name: ClassVar[str] = "bind-tvm-kernels"
    library: Any
    target: Any

    def options(self) -> dict[str, Any]:
        return {}  # runtime objects; the report's backend section records the target

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        target = self.target
        with graph.rewrite(self.name) as rw:
            for node in list(graph.module.graph.nodes):
                if isinstance(node.target, ChainCall):
                    (first, _, first_layout), (second, _, second_layout) = _chain_kernels(
                        node.target, target
                    )
                    kernels = (_kernel(self.library, first), _kernel(self.library, second))
                    layouts = (first_layout, second_layout)
                    rw.set_target(node, _SparseChain(node.target, kernels, layouts, target))
                elif is_sparse_call(node):
                    call = SparseCall.of(node)
                    kernel = _kernel(self.library, kernel_name(call.shape, target))
                    rw.set_target(node, _SparseLinear(kernel, call, target))
        return PassResult(bool(rw.changes), changes=tuple(rw.changes))


def _bind(
    lowered: Graph, library: Any, target: Target, options: BackendOptions
) -> list[str]:
    """Rewrite `lowered` (a copy) so its sparse calls run the kernels of `library`; the notes.

    Chains still unfused are fused exactly when `library` holds their kernels (module rules).
    """
    chains = [chain.call() for chain in find_chains(lowered.module).chains]
    present = [
        all(_implements(library, name) for name, _, _ in _chain_kernels(call, target))
        for call in chains
    ]
    if any(present) and not all(present):
        raise ArtifactError(
            "the kernel library holds the fused kernels of some sparse chains but not of "
            f"others ({sum(present)} of {len(chains)}). Fix: rebuild the artifact."
        )
    fuse: list[RewritePass] = [FuseSparseChains()] if chains and all(present) else []
    notes = run_lowering(lowered, [*fuse, BindTvmKernels(library=library, target=target)], options)
    if chains and not fuse:
        notes.append("sparse chains not fused: the kernel library was built without chain kernels")
    return notes


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
        notes: Sequence[str] = (),
    ) -> None:
        self._module = module
        self._library = library
        self._program = program
        self._record = record
        self._threads = threads
        self._dense_threads = dense_threads or threads
        self.notes = list(notes)

    @classmethod
    def build(
        cls,
        graph: Graph,
        target: Target,
        threads: int | None,
        dense_threads: int | None = None,
        fuse_chains: bool = True,
        options: BackendOptions | None = None,
    ) -> PartitionedExecutable:
        """Lower a copy of `graph`: fuse its chains, compile the kernels it needs for
        `target`, and bind them.

        TVM's kernels run on `threads`, torch's dense ops on `dense_threads` (None: the
        same); `fuse_chains=False` builds no chain kernels, so every sparse linear runs alone.
        """
        options = options or BackendOptions()
        lowered = graph.copy()
        notes = run_lowering(lowered, [FuseSparseChains()] if fuse_chains else [], options)
        library = build_kernels(lowered.module, target)
        notes += _bind(lowered, library, target, options)
        record = target_record(target, "cpu")
        return cls(
            lowered.module, library, graph.export_program, record, threads, dense_threads, notes
        )

    @classmethod
    def with_library(
        cls,
        graph: Graph,
        library: Any,
        program: Callable[[], ExportedProgram],
        record: dict[str, Any],
        threads: int | None,
        dense_threads: int | None = None,
    ) -> PartitionedExecutable:
        """Bind a copy of `graph` (unlowered, e.g. a loaded program's) to a built `library`."""
        lowered = graph.copy()
        notes = _bind(lowered, library, Target(record["tvm_target"]), BackendOptions())
        return cls(lowered.module, library, program, record, threads, dense_threads, notes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch_threads(self._dense_threads), torch.no_grad():
            set_threads(self._threads)
            return self._module(*args, **kwargs)

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
