"""Import a sparsec graph's exported program into Relax, sparse ops lowered to our TIR kernels.

Rules:
- `tvm.relax.frontend.torch.from_exported_program` translates the ATen graph; sparsec's
  sparse linears (`bsr_linear`, `csr_linear`, `nm_linear`, matched by op name as the
  importer does) become `relax.call_tir` of the kernel for their block shape and the target;
- a sparse linear's activations are flattened to [tokens, in_features] (tokens symbolic),
  so one kernel per (out, in, r, c) serves every layer and every batch and sequence size;
- with `fuse_chains`, each chain of `layout.find_chains` (sparse linear → activation? →
  sparse linear) becomes two `call_tir`s that hand the intermediate over as a panel (the
  first writes it with bias and activation fused; the activation node emits nothing), as
  in partitioned mode; CPU targets only (the CUDA kernels have no panel layouts);
- every weight-sized constant is lifted into a parameter of `main` after the user inputs,
  so the compiled library holds code and the weights travel in a params file beside it;
- N:M weights are CSR with a fixed count per row: slot k of a row holds input column
  `k // n * m + indices[k]` (indices are positions within the group, sparsec/ops);
- a sparse op's arrays are read from the program's constants (parameters and buffers) and
  turned into the kernel's operands at import (`SparseCall.operands`; slab-major for
  TOKEN kernels, `kernel_operands`); arrays computed in the graph are refused.

Example:
    imported = import_graph(graph.export_program(), build_target("cpu"))
    lib = tvm.compile(imported.module, target=...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax, tirx
from tvm.relax.frontend.torch import from_exported_program
from tvm.target import Target

from sparsec.errors import BackendError

from .activations import Activation, activation_of
from .cuda_kernels import bsr_cuda_kernel
from .fuse_chains import SparseChain, find_chains
from .isa import isa_of
from .kernels import (
    SLAB_FEATURES,
    BsrShape,
    KernelLayout,
    Schedule,
    bsr_kernel,
    choose_schedule,
    panel_tile,
)
from .slabs import slab_major
from .sparse_calls import SPARSE_OPS, SparseCall

__all__ = [
    "SPARSE_OPS",
    "ImportedProgram",
    "chain_layouts",
    "import_graph",
    "kernel_for",
    "kernel_name",
    "kernel_operands",
    "reads_slab_major",
]

_LIFT_MIN_ELEMENTS = 64  # smaller constants (scalars, shapes) stay in the code


@dataclass(frozen=True)
class ImportedProgram:
    """A Relax module whose `main` takes the user inputs, then `params` in order."""

    module: tvm.IRModule
    num_inputs: int
    params: tuple[np.ndarray, ...]


def kernel_name(shape: BsrShape, target: Target, layout: KernelLayout | None = None) -> str:
    """The unique name of `kernel_for(shape, target, layout)`'s kernel (cheap: builds no TIR)."""
    layout = layout or KernelLayout()
    base = f"{shape.out_features}x{shape.in_features}_b{shape.r}x{shape.c}"
    if target.kind.name == "cuda":
        if layout != KernelLayout():
            raise BackendError(
                f"the CUDA kernels read and write token-major activations only, not {layout}. "
                "Fix: fuse sparse chains on CPU targets only."
            )
        return f"sparse_linear_{base}_cuda"
    isa = isa_of(target)
    schedule = choose_schedule(shape, isa, layout)
    order = f"_slab{SLAB_FEATURES}" if schedule is Schedule.TOKEN else ""
    return f"sparse_linear_{base}_{schedule.value}_{isa.name}{layout.suffix}{order}"


def reads_slab_major(shape: BsrShape, target: Target, layout: KernelLayout | None = None) -> bool:
    """Whether `kernel_for(shape, target, layout)`'s kernel takes its weight slab-major
    (`slabs.slab_major`); the others take CSR order."""
    if target.kind.name == "cuda":
        return False
    return choose_schedule(shape, isa_of(target), layout) is Schedule.TOKEN


def kernel_operands(
    shape: BsrShape,
    target: Target,
    layout: KernelLayout | None,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, cols, crow) in the order `kernel_for(shape, target, layout)`'s kernel reads."""
    if reads_slab_major(shape, target, layout):
        return slab_major(shape, *operands)
    return operands


def kernel_for(
    shape: BsrShape, target: Target, layout: KernelLayout | None = None
) -> tuple[str, tirx.PrimFunc]:
    """A unique name and the TIR kernel of `shape` for `target` (CPU or CUDA) and `layout`."""
    name = kernel_name(shape, target, layout)
    if target.kind.name == "cuda":
        return name, bsr_cuda_kernel(shape)
    isa = isa_of(target)
    return name, bsr_kernel(shape, choose_schedule(shape, isa, layout), isa, layout)


def chain_layouts(
    second: BsrShape, activation: Activation, target: Target
) -> tuple[KernelLayout, KernelLayout]:
    """The layouts of a fused chain's kernels: the first writes the second's panel."""
    isa = isa_of(target)
    consumer = KernelLayout(panel_input=True)
    tile = panel_tile(second, choose_schedule(second, isa, consumer), isa)
    return KernelLayout(output_tile=tile, activation=activation), consumer


@dataclass
class _Chains:
    """The chains fused in one import, and what each first kernel handed to its second."""

    by_first: dict[fx.Node, SparseChain] = field(default_factory=dict)
    by_second: dict[fx.Node, SparseChain] = field(default_factory=dict)
    activations: set[fx.Node] = field(default_factory=set)
    # second linear → (the panel, the token count, x's leading dims)
    handed_over: dict[fx.Node, tuple[relax.Expr, tirx.PrimExpr, list[tirx.PrimExpr]]] = field(
        default_factory=dict
    )

    @classmethod
    def of(cls, chains: tuple[SparseChain, ...]) -> _Chains:
        plan = cls()
        for chain in chains:
            plan.by_first[chain.first] = chain
            plan.by_second[chain.second] = chain
            if chain.activation_node is not None:
                plan.activations.add(chain.activation_node)
        return plan


def _kernel_var(
    bb: relax.BlockBuilder, shape: BsrShape, target: Target, layout: KernelLayout
) -> relax.GlobalVar:
    name = kernel_name(shape, target, layout)
    module = bb.get()
    if name in [gv.name_hint for gv in module.get_global_vars()]:
        return module.get_global_var(name)
    _, func = kernel_for(shape, target, layout)
    return bb.add_func(func.with_attr("global_symbol", name), name)


def _emit_sparse_linear(
    importer: object,
    node: fx.Node,
    target: Target,
    shape: BsrShape,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bias: relax.Expr,
    chains: _Chains,
) -> relax.Var:
    """Flatten x to [tokens, in], call the kernel, restore x's leading dims.

    The first linear of a chain returns the panel it wrote instead; the second reads that
    panel in place of x.
    """
    bb: relax.BlockBuilder = importer.block_builder  # type: ignore[attr-defined]
    env = importer.env  # type: ignore[attr-defined]
    layout = KernelLayout()
    if node in chains.by_second:
        x2, tokens, leading = chains.handed_over.pop(node)
        layout = KernelLayout(panel_input=True)
    else:
        x = env[node.args[0]]
        if str(x.ty.dtype) != "float32":
            raise BackendError(
                f"%{node.name}: the TVM sparse kernels take float32 activations, not "
                f"{str(x.ty.dtype)}. Fix: keep the model in float32 for the tvm backend."
            )
        leading = list(x.ty.shape.values)[:-1]
        x2 = bb.emit(relax.op.reshape(x, [-1, shape.in_features]))
        tokens = x2.ty.shape.values[0]
    chain = chains.by_first.get(node)
    if chain is not None:
        layout, _ = chain_layouts(SparseCall.of(chain.second).shape, chain.activation, target)
    tensors = [
        relax.const(array.numpy(), str(array.dtype).removeprefix("torch."))  # else int64 → int32
        for array in kernel_operands(shape, target, layout, operands)
    ]
    if chain is not None:
        tile = layout.output_tile
        panel = bb.emit(
            relax.call_tir(
                _kernel_var(bb, shape, target, layout),
                [x2, *tensors, bias],
                relax.TensorType(
                    [(tokens + tile - 1) // tile, shape.out_features, tile], "float32"
                ),
            )
        )
        chains.handed_over[chain.second] = (panel, tokens, leading)
        return panel
    y2 = bb.emit(
        relax.call_tir(
            _kernel_var(bb, shape, target, layout),
            [x2, *tensors, bias],
            relax.TensorType([tokens, shape.out_features], "float32"),
        )
    )
    return bb.emit(relax.op.reshape(y2, [*leading, shape.out_features]))


def _program_constants(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """The values of the program's parameter, buffer and constant placeholders, by name.

    Why: the Relax importer converts ops while weights are still variables of `main` (it
    binds them afterwards), but a sparse kernel's operands are reordered at import.
    """
    signature = program.graph_signature
    sources = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    return {
        name: program.state_dict[key] if key in program.state_dict else program.constants[key]
        for name, key in sources.items()
    }


def _convert_sparse(
    target: Target, chains: _Chains, constants: dict[str, torch.Tensor]
) -> Callable[[fx.Node, object], relax.Var]:
    """bsr_linear, csr_linear and nm_linear: a call of the kernel for their block shape."""

    def constant(arg: object, node: fx.Node) -> object:
        if not isinstance(arg, fx.Node):
            return arg
        if arg.name not in constants:
            raise BackendError(
                f"%{node.name}: the TVM kernels take a sparse op's weight arrays as constants, "
                f"reordered at import, but %{arg.name} is computed or an input. Fix: keep "
                "the arrays as parameters or buffers of the module (lower-sparse-weights does)."
            )
        return constants[arg.name].detach()

    def convert(node: fx.Node, importer: object) -> relax.Var:
        env = importer.env  # type: ignore[attr-defined]
        call = SparseCall.of(node)
        args = [constant(arg, node) for arg in node.args[1 : 1 + call.arity]]
        values, cols, crow, bias = call.operands(*args)
        bias_node = node.args[3 if call.nm is not None else 4]
        bias_expr = (
            env[bias_node]
            if bias is not None
            else relax.const(np.zeros(call.shape.out_features, np.float32), "float32")
        )
        return _emit_sparse_linear(
            importer, node, target, call.shape, (values, cols, crow), bias_expr, chains
        )

    return convert


def _convert_activation(chains: _Chains) -> Callable[[fx.Node, object], relax.Expr]:
    """relu and gelu: nothing inside a chain (its first kernel applied them), else Relax ops."""

    def convert(node: fx.Node, importer: object) -> relax.Expr:
        env = importer.env  # type: ignore[attr-defined]
        x = env[node.args[0]]
        if node in chains.activations:
            return x  # the first kernel's panel, activation applied
        activation = activation_of(node)
        if activation is None:
            raise BackendError(
                f"%{node.name}: {node.target} with {node.kwargs} is no activation Relax has. "
                "Fix: use approximate='none' or 'tanh'."
            )
        op = {
            Activation.RELU: relax.op.nn.relu,
            Activation.GELU: relax.op.nn.gelu,
            Activation.GELU_TANH: relax.op.nn.gelu_tanh,
        }[activation]
        return importer.block_builder.emit(op(x))  # type: ignore[attr-defined]

    return convert


@relax.expr_functor.mutator
class _ConstantLifter(relax.PyExprMutator):  # type: ignore[misc]
    """Replaces each weight-sized constant by a fresh variable and remembers its value."""

    def __init__(self, module: tvm.IRModule) -> None:
        super().__init__(module)
        self.params: list[relax.Var] = []
        self.values: list[np.ndarray] = []
        self._seen: dict[tvm.ir.GenericConst, relax.Var] = {}

    def visit_generic_const_(self, const: tvm.ir.GenericConst) -> relax.Expr:
        value = const.value
        if not isinstance(value, tvm.runtime.Tensor) or value.numel() < _LIFT_MIN_ELEMENTS:
            return const
        if const not in self._seen:
            var = relax.Var(f"param_{len(self.params)}", const.ty)
            self._seen[const] = var
            self.params.append(var)
            self.values.append(value.numpy())
        return self._seen[const]


def _lift_constants(module: tvm.IRModule) -> tuple[tvm.IRModule, tuple[np.ndarray, ...], int]:
    main = module["main"]
    lifter = _ConstantLifter(module)
    body = lifter.visit_expr(main.body)
    func = relax.Function(
        [*main.params, *lifter.params], body, main.ret_ty, main.is_pure, main.attrs
    )
    module = module.clone() if hasattr(module, "clone") else module
    module["main"] = func
    return module, tuple(lifter.values), len(main.params)


def import_graph(
    program: torch.export.ExportedProgram, target: Target, fuse_chains: bool = False
) -> ImportedProgram:
    """Translate `program` to Relax for `target`; sparse linears call our kernels.

    `fuse_chains` (CPU targets): chains of sparse linears hand activations over in panel
    layout (module rules).
    """
    chains = _Chains()
    # decomposed here, so that chains and constants are found on the very nodes the
    # importer converts
    program = program.run_decompositions()
    if fuse_chains and target.kind.name != "cuda":
        chains = _Chains.of(find_chains(program.graph_module).chains)
    sparse = _convert_sparse(target, chains, _program_constants(program))
    convert_map: dict[str, Callable[[fx.Node, object], relax.Expr]] = {
        op: sparse for op in SPARSE_OPS
    }
    if chains.activations:
        convert_map["gelu.default"] = convert_map["relu.default"] = _convert_activation(chains)
    try:
        module = from_exported_program(
            program,
            custom_convert_map=convert_map,
            keep_params_as_input=False,
            run_ep_decomposition=False,
        )
    except BackendError:
        raise
    except Exception as exc:  # the importer raises bare errors naming the unsupported op
        raise BackendError(
            f"TVM's Relax importer could not translate the program: {exc}. Fix: use the "
            "onnxruntime or torch backend for this model, or report the op."
        ) from exc
    module, params, num_inputs = _lift_constants(module)
    return ImportedProgram(module, num_inputs, params)
