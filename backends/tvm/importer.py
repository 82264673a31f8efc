"""Import a sparsec graph's exported program into Relax, sparse ops lowered to our TIR kernels.

Rules:
- `tvm.relax.frontend.torch.from_exported_program` translates the ATen graph; sparsec's
  sparse linears (`bsr_linear`, `csr_linear`, `nm_linear`, matched by op name as the
  importer does) become `relax.call_tir` of the kernel for their block shape and the target;
- a sparse linear's activations are flattened to [tokens, in_features] (tokens symbolic),
  so one kernel per (out, in, r, c) serves every layer and every batch and sequence size;
- every weight-sized constant is lifted into a parameter of `main` after the user inputs,
  so the compiled library holds code and the weights travel in a params file beside it;
- N:M weights are CSR with a fixed count per row: slot k of a row holds input column
  `k // n * m + indices[k]` (indices are positions within the group, sparsec/ops).

Example:
    imported = import_graph(graph.export_program(), build_target("cpu"))
    lib = tvm.compile(imported.module, target=...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax, tirx
from tvm.relax.frontend.torch import from_exported_program
from tvm.target import Target

from sparsec.errors import BackendError

from .cuda_kernels import bsr_cuda_kernel
from .kernels import BsrShape, bsr_kernel, choose_schedule
from .target import vector_lanes

__all__ = ["SPARSE_OPS", "ImportedProgram", "import_graph", "kernel_for"]

# op names (OpOverload.__name__, what the Relax importer keys its convert map on)
SPARSE_OPS: tuple[str, ...] = ("bsr_linear.default", "csr_linear.default", "nm_linear.default")
_LIFT_MIN_ELEMENTS = 64  # smaller constants (scalars, shapes) stay in the code


@dataclass(frozen=True)
class ImportedProgram:
    """A Relax module whose `main` takes the user inputs, then `params` in order."""

    module: tvm.IRModule
    num_inputs: int
    params: tuple[np.ndarray, ...]


def kernel_for(shape: BsrShape, target: Target) -> tuple[str, tirx.PrimFunc]:
    """A unique name and the TIR kernel of `shape` for `target` (CPU or CUDA)."""
    base = f"{shape.out_features}x{shape.in_features}_b{shape.r}x{shape.c}"
    if target.kind.name == "cuda":
        return f"sparse_linear_{base}_cuda", bsr_cuda_kernel(shape)
    lanes = vector_lanes(target)
    schedule = choose_schedule(shape, lanes)
    return f"sparse_linear_{base}_{schedule.value}{lanes}", bsr_kernel(shape, schedule, lanes)


def _static_dims(expr: relax.Expr, what: str, node: fx.Node) -> list[int]:
    dims = []
    for dim in expr.ty.shape.values:
        if not isinstance(dim, tirx.IntImm):
            raise BackendError(f"%{node.name}: {what} must have a static shape, got {expr.ty}")
        dims.append(int(dim))
    return dims


def _emit_sparse_linear(
    importer: object,
    node: fx.Node,
    target: Target,
    shape: BsrShape,
    tensors: tuple[relax.Expr, relax.Expr, relax.Expr],
    bias_node: object,
) -> relax.Var:
    """Flatten x to [tokens, in], call the kernel, restore x's leading dims."""
    bb: relax.BlockBuilder = importer.block_builder  # type: ignore[attr-defined]
    env = importer.env  # type: ignore[attr-defined]
    x = env[node.args[0]]
    if str(x.ty.dtype) != "float32":
        raise BackendError(
            f"%{node.name}: the TVM sparse kernels take float32 activations, not "
            f"{str(x.ty.dtype)}. Fix: keep the model in float32 for the tvm backend."
        )
    bias = (
        env[bias_node]
        if isinstance(bias_node, fx.Node)
        else relax.const(np.zeros(shape.out_features, np.float32), "float32")
    )
    name, func = kernel_for(shape, target)
    module = bb.get()
    gvar = (
        module.get_global_var(name)
        if name in [gv.name_hint for gv in module.get_global_vars()]
        else bb.add_func(func.with_attr("global_symbol", name), name)
    )
    leading = list(x.ty.shape.values)[:-1]
    x2 = bb.emit(relax.op.reshape(x, [-1, shape.in_features]))
    tokens = x2.ty.shape.values[0]
    y2 = bb.emit(
        relax.call_tir(
            gvar,
            [x2, *tensors, bias],
            relax.TensorType([tokens, shape.out_features], "float32"),
        )
    )
    return bb.emit(relax.op.reshape(y2, [*leading, shape.out_features]))


def _convert_bsr(target: Target) -> Callable[[fx.Node, object], relax.Var]:
    def convert(node: fx.Node, importer: object) -> relax.Var:
        env = importer.env  # type: ignore[attr-defined]
        _, values, cols, crow, bias, out_features, in_features = node.args[:7]
        values_expr = env[values]
        dims = _static_dims(values_expr, "values", node)
        r, c = (dims[1], dims[2]) if len(dims) == 3 else (1, 1)
        if len(dims) == 1:  # csr: values [nnz] is a block of 1×1
            values_expr = importer.block_builder.emit(  # type: ignore[attr-defined]
                relax.op.reshape(values_expr, [dims[0], 1, 1])
            )
        shape = BsrShape(int(out_features), int(in_features), r, c)
        return _emit_sparse_linear(
            importer, node, target, shape, (values_expr, env[cols], env[crow]), bias
        )

    return convert


def _convert_nm(target: Target) -> Callable[[fx.Node, object], relax.Var]:
    def convert(node: fx.Node, importer: object) -> relax.Var:
        bb: relax.BlockBuilder = importer.block_builder  # type: ignore[attr-defined]
        env = importer.env  # type: ignore[attr-defined]
        _, values, indices, bias, n, m = node.args[:6]
        out_features, kept = _static_dims(env[values], "values", node)
        in_features = kept * int(m) // int(n)
        nnz = out_features * kept
        values3 = bb.emit(relax.op.reshape(env[values], [nnz, 1, 1]))
        group_base = relax.const(
            (np.arange(kept, dtype=np.int64) // int(n) * int(m))[None], "int64"
        )
        absolute = relax.op.add(relax.op.astype(env[indices], "int64"), group_base)
        cols = bb.emit(relax.op.reshape(absolute, [nnz]))
        crow = relax.const(np.arange(out_features + 1, dtype=np.int64) * kept, "int64")
        shape = BsrShape(out_features, in_features, 1, 1)
        return _emit_sparse_linear(importer, node, target, shape, (values3, cols, crow), bias)

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


def import_graph(program: torch.export.ExportedProgram, target: Target) -> ImportedProgram:
    """Translate `program` to Relax for `target`; sparse linears call our kernels."""
    convert_map = {
        "bsr_linear.default": _convert_bsr(target),
        "csr_linear.default": _convert_bsr(target),
        "nm_linear.default": _convert_nm(target),
    }
    try:
        module = from_exported_program(
            program, custom_convert_map=convert_map, keep_params_as_input=False
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
