"""Trace a torch model into a Graph with torch.export (non-strict) and dynamic dims.

Rules:
- dim 0 of every tensor input is the dynamic `batch`; dim 1 of integer inputs of rank >= 2
  (token ids, masks) is the dynamic `seq`, and so is dim 1 of a bool input of rank >= 2
  whose size is the token ids' (a padding mask); `dynamic=False` traces static shapes;
- a size-1 example along a dynamic dim is repeated to size 2 first, since torch.export
  specialises sizes 0 and 1;
- the result is unlifted (parameters as get_attr) and ATen-level; the user's model and
  example tensors are not modified (tracing runs on contiguous copies).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch.export import Dim
from torch.utils import _pytree as pytree

from sparsec.errors import TraceError
from sparsec.frontends.trace_settings import trace_settings
from sparsec.ir.graph import Graph, InputSpec
from sparsec.ir.inputs import normalize_inputs

__all__ = ["drop_guards", "own_tensors", "suggested_bounds", "trace", "trace_error"]

_BATCH = "batch"
_SEQ = "seq"


def _is_token_like(tensor: torch.Tensor) -> bool:
    return tensor.dim() >= 2 and not tensor.dtype.is_floating_point and tensor.dtype != torch.bool


def _dynamic_dims(
    tensor: torch.Tensor, batch: Dim, seq: Dim, seq_sizes: set[int]
) -> dict[int, Dim] | None:
    dims: dict[int, Dim] = {}
    if tensor.dim() >= 1:
        dims[0] = batch
    if _is_token_like(tensor) or (
        tensor.dtype == torch.bool and tensor.dim() >= 2 and tensor.shape[1] in seq_sizes
    ):
        dims[1] = seq
    return dims or None


def _widen(tensor: torch.Tensor, dims: dict[int, Dim] | None) -> torch.Tensor:
    """Repeat size-1 dynamic dims to 2 so export does not specialise them."""
    for axis in dims or {}:
        if tensor.shape[axis] == 1:
            tensor = torch.cat([tensor, tensor], dim=axis)
    return tensor


def _dynamic_spec(
    args: tuple[Any, ...], kwargs: dict[str, Any], bounds: dict[str, dict[str, int]]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if args and kwargs:
        raise TraceError("mix of positional and keyword example inputs: pass all by keyword")
    batch, seq = Dim(_BATCH, **bounds.get(_BATCH, {})), Dim(_SEQ, **bounds.get(_SEQ, {}))
    leaves = pytree.tree_leaves((args, kwargs))
    # a bool mask follows the token ids' sequence (a key padding mask), not a fixed width
    seq_sizes = {x.shape[1] for x in leaves if isinstance(x, torch.Tensor) and _is_token_like(x)}

    def dims(x: torch.Tensor) -> dict[int, Dim] | None:
        return _dynamic_dims(x, batch, seq, seq_sizes)

    def leaf_spec(x: Any) -> Any:
        return dims(x) if isinstance(x, torch.Tensor) else None

    def widen(x: Any) -> Any:
        return _widen(x, dims(x)) if isinstance(x, torch.Tensor) else x

    spec = pytree.tree_map(leaf_spec, kwargs) if kwargs else pytree.tree_map(leaf_spec, args)
    return spec, pytree.tree_map(widen, args), pytree.tree_map(widen, kwargs)


_SUGGESTED_DIM = re.compile(r"^\s*(\w+) = Dim\('\w+'((?:, (?:min|max)=\d+)*)\)\s*$", re.MULTILINE)


def suggested_bounds(message: str) -> dict[str, dict[str, int]]:
    """torch.export's "Suggested fixes" that only bound a dim (`seq = Dim('seq', max=512)`).

    A model with a position table of 512 rows supports any sequence up to 512: the bound is
    the truth about the model, so it is applied. Suggestions to make a dim static are not.
    """
    if "Suggested fixes" not in message:
        return {}
    bounds: dict[str, dict[str, int]] = {}
    for name, options in _SUGGESTED_DIM.findall(message.split("Suggested fixes", 1)[1]):
        for key, value in re.findall(r"(min|max)=(\d+)", options):
            bounds.setdefault(name, {})[key] = int(value)
    return bounds


def _export(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic: bool
) -> tuple[torch.export.ExportedProgram, Any, tuple[Any, ...], dict[str, Any]]:
    """Export, applying torch.export's suggested dim bounds once if it asks for them."""
    bounds: dict[str, dict[str, int]] = {}
    while True:
        spec, trace_args, trace_kwargs = _dynamic_spec(args, kwargs, bounds) if dynamic else (None, args, kwargs)
        try:
            with torch.no_grad():
                program = torch.export.export(
                    model, trace_args, trace_kwargs or None, dynamic_shapes=spec, strict=False
                )
            return program, spec, trace_args, trace_kwargs
        except Exception as exc:  # torch.export raises many unrelated types; all mean "untraceable"
            suggested = suggested_bounds(str(exc)) if dynamic and not bounds else {}
            if not suggested:
                eager = _eager_error(model, args, kwargs)
                if eager is not None:
                    raise _eager_trace_error(model, eager) from exc
                raise trace_error(model, exc) from exc
            bounds = suggested


def _eager_error(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Exception | None:
    """The error the model raises on the example inputs without tracing, or None if it runs.
    Why: when the model itself fails, torch.export's error is about tracing and misleads.
    Not tried in training mode, where a forward would update the user's BN statistics."""
    if model.training:
        return None
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as exc:  # the user's forward: any error means it does not run
        return exc
    return None


def _eager_trace_error(model: torch.nn.Module, exc: Exception) -> TraceError:
    text = str(exc).strip()
    first_line = next(iter(text.splitlines()), type(exc).__name__)[:400]
    fix = _specific_fix(text) or (
        "make `model(*example_inputs)` run first (check the inputs' names, shapes and dtypes, "
        "and the model's config); sparsec traces what the model runs"
    )
    return TraceError(
        f"{type(model).__name__} fails on the example inputs without tracing too: "
        f"{type(exc).__name__}: {first_line}\nFix: {fix}"
    )


def trace_error(model: torch.nn.Module, exc: Exception) -> TraceError:
    """A one-screen TraceError for an export failure: the cause and its fix; torch's full
    text (graph dumps included) goes to `details`, not to the user's terminal."""
    text = str(exc).strip()
    first_line = text.splitlines()[0][:400] if text else type(exc).__name__
    return TraceError(
        f"torch.export could not trace {type(model).__name__}: {type(exc).__name__}: "
        f"{first_line}\nFix: {_fix_for(text)}",
        details=text,
    )


# (pattern in torch's message, fix); the first that matches is the cause
_FIXES: tuple[tuple[str, str], ...] = (
    (
        r"'indices'.*(Long|Int)|Expected tensor for argument #1 'indices'|embedding.*Float",
        "an embedding got floating-point input: pass token ids as integers (ids.long())",
    ),
    (
        r"data-dependent|GuardOnDataDependentSymNode|Could not extract specialized integer|unbacked",
        "forward() depends on tensor values (an `if` on a tensor, .item(), .tolist(), a boolean "
        "mask or nonzero() deciding a shape): use torch.where / torch.cond, keep shapes fixed, "
        "or compile the submodules around that code",
    ),
    (
        r"not a known type|pytree",
        "the model takes or returns an object torch.export cannot flatten; pass and return "
        "tensors or tuples/dicts of tensors",
    ),
    (
        r"Constraints violated|specialized|specialize",
        "the model fixes the size of a dimension sparsec traces as dynamic (batch, or the "
        "sequence of integer inputs): pass sparsec.compile(..., dynamic=False) to trace the "
        "example's exact shapes, or remove the size assumption from forward()",
    ),
)


def _specific_fix(message: str) -> str | None:
    """The fix for the cause a message names, or None when no known cause matches."""
    return next((fix for pattern, fix in _FIXES if re.search(pattern, message)), None)


def _fix_for(message: str) -> str:
    """The fix for an export failure, from the cause its message names."""
    return _specific_fix(message) or (
        "remove Python control flow that depends on tensor values from forward() (use "
        "torch.where / torch.cond), or pass sparsec.compile(..., dynamic=False) if the model "
        "only supports fixed shapes; TraceError.details has torch's full message"
    )


def _check_example_inputs(model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse example inputs torch.export would reject with an obscure message."""
    for where, value in [*((f"positional input {i}", a) for i, a in enumerate(args)), *kwargs.items()]:
        if isinstance(value, np.ndarray) or isinstance(value, (int, float)) and not isinstance(value, bool):
            kind = "a numpy array" if isinstance(value, np.ndarray) else f"a Python {type(value).__name__}"
            raise TraceError(
                f"example {where} is {kind}; sparsec traces torch tensors. Fix: pass "
                "torch.from_numpy(x) / torch.tensor(x)"
            )
    try:
        inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as exc:
        params = ", ".join(inspect.signature(model.forward).parameters)
        given = f"keywords {sorted(kwargs)}" if kwargs else f"{len(args)} positional inputs"
        raise TraceError(
            f"the example inputs ({given}) do not fit {type(model).__name__}.forward({params}): "
            f"{exc}. Fix: pass them as forward() names them"
        ) from None
    except ValueError:  # no signature to check (builtins): torch.export will say
        return


def _symbol_names(gm: fx.GraphModule) -> dict[str, str]:
    """Map the tracer's symbols (s31, s77) to the dimension names we gave them."""
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, size in enumerate(val.shape):
            if isinstance(size, torch.SymInt) and str(size).isidentifier():
                is_seq = axis == 1 and not val.dtype.is_floating_point
                names.setdefault(str(size), _SEQ if is_seq else _BATCH)
    return names


def drop_guards(gm: fx.GraphModule) -> None:
    """The unlifted module checks input shapes in `_guards_fn`; shape checks are ours now."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    gm.recompile()


def own_tensors(gm: fx.GraphModule) -> None:
    """Give the graph its own copies of parameters and buffers (ties kept).

    The unlifted module shares tensors with the user's model; training the compiled graph
    must not change the user's model.
    """
    copies: dict[int, torch.Tensor] = {}
    for owner in gm.modules():
        for store in (owner._parameters, owner._buffers):
            for leaf, value in store.items():
                if value is None:
                    continue
                if id(value) not in copies:
                    data = value.detach().clone()
                    copies[id(value)] = (
                        torch.nn.Parameter(data, requires_grad=value.requires_grad)
                        if isinstance(value, torch.nn.Parameter)
                        else data
                    )
                store[leaf] = copies[id(value)]


def _mutated_buffers(gm: fx.GraphModule) -> list[str]:
    """Buffers that forward updates in place (running counters, caches), by name."""
    mutated = []
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not schema.is_mutable:
            continue
        for argument, value in zip(schema.arguments, node.args, strict=False):
            if argument.is_write and isinstance(value, fx.Node) and value.op == "get_attr":
                mutated.append(str(value.target))
    return sorted(set(mutated))


def _input_specs(gm: fx.GraphModule, names: dict[str, str]) -> tuple[InputSpec, ...]:
    specs = []
    for node in gm.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            val = node.meta["val"]
            shape = tuple(
                names.get(str(s), str(s)) if isinstance(s, torch.SymInt) else int(s) for s in val.shape
            )
            specs.append(InputSpec(str(node.target), str(val.dtype).removeprefix("torch."), shape))
    return tuple(specs)


def _private_copy(value: Any) -> Any:
    """A contiguous copy of a tensor input: a forward that writes into its input must not
    change the caller's tensor, and a strided slice must not make export guard on the
    padded size it was sliced from."""
    return value.detach().clone(memory_format=torch.contiguous_format) if isinstance(value, torch.Tensor) else value


def trace(
    model: torch.nn.Module, example_inputs: Any, *, dynamic: bool = True
) -> Graph:
    """Trace `model` on `example_inputs` into a Graph (see module docstring for the rules)."""
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = pytree.tree_map(_private_copy, normalize_inputs(example_inputs))
    _check_example_inputs(model, args, kwargs)
    with trace_settings(model) as notes:
        program, spec, trace_args, trace_kwargs = _export(model, args, kwargs, dynamic)
    gm = program.module()
    drop_guards(gm)
    own_tensors(gm)
    names = _symbol_names(gm)
    outputs = program.call_spec.out_spec
    output_names = tuple(f"output_{i}" for i in range(outputs.num_leaves if outputs else 1))
    return Graph(
        module=gm,
        example_args=trace_args,
        example_kwargs=trace_kwargs,
        dynamic_shapes=spec,
        symbol_names=names,
        input_specs=_input_specs(gm, names),
        output_names=output_names,
        notes=(*notes, *_mutation_notes(gm)),
    )


def program_graph(program: torch.export.ExportedProgram) -> Graph:
    """A Graph of a saved program (a loaded artifact's), for a backend to lower again.

    It has no example inputs: it is run and re-propagated, not re-exported.
    """
    gm = program.module()
    return Graph(module=gm, example_args=(), symbol_names=_symbol_names(gm))


def _mutation_notes(gm: fx.GraphModule) -> list[str]:
    mutated = _mutated_buffers(gm)
    if not mutated:
        return []
    return [
        f"forward updates buffers in place ({', '.join(mutated[:5])}"
        f"{', ...' if len(mutated) > 5 else ''}): the compiled program updates its own copies "
        "on every call, never the original model's"
    ]
