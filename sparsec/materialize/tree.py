"""Put the pruned graph back into a copy of the user's own module tree.

Rules:
- the copy shares its tensors with the graph (same names: torch.export keeps the user's
  parameter names), so training the module trains what the backends lower, and it costs
  no second copy of the weights; tensors the trace never read are copied;
- every module whose tensors changed shape, or that holds such a module, runs its class's
  updater, children before parents (`registry.py`); a class without one is checked for int attributes still holding
  a width that changed, which are named if the outputs then disagree;
- the result must reproduce the graph's outputs on the example inputs in eval mode, else
  `MaterializeError` names the module and attribute sparsec could not update, and the fix;
- each module keeps the training flag it had in the user's model;
- blocks that depth pruning removed are removed from the copy too, the rest renumbered
  (`_depth.py`); the record then names tensors as a model of the smaller depth does;
- `Materialized.record` (new tensor shapes and changed attributes) rebuilds the same tree
  from a fresh model of the original architecture (`apply_record`), for checkpoints.

Example:
    result = materialize(model, compiled.graph)
    result.module.train()
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

import sparsec.materialize._families  # noqa: F401 - registers the Hugging Face updaters
import sparsec.materialize._layers  # noqa: F401 - registers the torch layer updaters
import sparsec.materialize._torchvision  # noqa: F401 - registers the torchvision updaters
from sparsec.errors import MaterializeError
from sparsec.frontends.trace_settings import no_attention_fastpath, no_kv_cache
from sparsec.ir import Graph
from sparsec.materialize._depth import drop_removed_blocks, renamed
from sparsec.materialize.registry import updater_for
from sparsec.pipeline import max_abs_diff

__all__ = ["Materialized", "Record", "apply_record", "materialize"]

_SIMPLE = (int, float, bool, str)


@dataclass(frozen=True)
class Record:
    """What pruning changed, by name: tensor shapes and module attributes."""

    shapes: dict[str, list[int]] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": self.shapes, "attributes": self.attributes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        return cls(dict(data.get("shapes", {})), dict(data.get("attributes", {})))


@dataclass(frozen=True)
class Materialized:
    """The user's module tree with the graph's decisions applied."""

    module: nn.Module
    record: Record
    max_error: float


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return itertools.chain(
        module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)
    )


class _Facts:
    """Arguments of the graph ops that read a module's tensors (a conv's groups)."""

    def __init__(self, readers: dict[str, fx.Node], prefix: str) -> None:
        self.readers, self.prefix = readers, prefix

    def call_arg(self, tensor: str, arg_name: str) -> Any:
        node = self.readers.get(f"{self.prefix}{tensor}")
        schema = getattr(node.target, "_schema", None) if node is not None else None
        if node is None or schema is None:
            return None
        for index, argument in enumerate(schema.arguments):
            if argument.name == arg_name:
                if arg_name in node.kwargs:
                    return node.kwargs[arg_name]
                return node.args[index] if index < len(node.args) else argument.default_value
        return None


def _readers(graph: Graph) -> dict[str, fx.Node]:
    """For each get_attr target, the first op that reads it."""
    readers: dict[str, fx.Node] = {}
    for node in graph.module.graph.nodes:
        if node.op == "get_attr":
            for user in node.users:
                if user.op == "call_function":
                    readers.setdefault(str(node.target), user)
                    break
    return readers


def _simple_attributes(module: nn.Module) -> dict[str, Any]:
    return {
        k: v for k, v in vars(module).items()
        if not k.startswith("_") and k != "training" and (isinstance(v, _SIMPLE) or (isinstance(v, tuple) and all(isinstance(x, int) for x in v)))
    }


def _check_lowered(user: dict[str, torch.Tensor], graph: dict[str, torch.Tensor]) -> None:
    lowered = [n for n, t in graph.items() if n in user and t.numel() == 0 and user[n].numel() > 0]
    if lowered:
        raise MaterializeError(
            f"{', '.join(lowered[:3])} were lowered to sparse ops (lower-sparse-weights), which "
            "the module tree has no layer for. Fix: fine-tune the pipeline's result before "
            "lower-sparse-weights (drop it from the pipeline; sparsec.sparse_finetune keeps the "
            "masks), then compile again; or keep using compiled.graph.module"
        )


def _changed_prefixes(changed: set[str]) -> set[str]:
    """Every module path that holds a changed tensor, itself or below ("" is the root)."""
    prefixes = {""}
    for name in changed:
        parts = name.split(".")[:-1]
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return prefixes


def _suspects(
    tree: nn.Module, prefixes: set[str], old_widths: dict[str, set[tuple[int, int]]]
) -> list[str]:
    """Int attributes of modules without an updater that still hold a width that changed."""
    found = []
    for name, module in tree.named_modules():
        if name not in prefixes or updater_for(module) is not None:
            continue
        below = {pair for path, pairs in old_widths.items() if path.startswith(name) for pair in pairs}
        for attr, value in _simple_attributes(module).items():
            news = sorted({new for old, new in below if old == value and not isinstance(value, bool)})
            if news:
                where = name or "the root module"
                found.append(
                    f"{where} ({type(module).__name__}).{attr} = {value}, a width pruned to "
                    f"{' or '.join(map(str, news))}"
                )
    return found


def _outputs(module: nn.Module, graph: Graph) -> Any:
    with no_kv_cache(module), no_attention_fastpath(), torch.no_grad():
        return module(*graph.example_args, **graph.example_kwargs)


def _located_call(tree: nn.Module, graph: Graph) -> tuple[Any, str]:
    """Run `tree` once: (its outputs, ''), or (None, where it failed: module path and error)."""
    stack: list[str] = []
    names = {id(m): name for name, m in tree.named_modules()}

    def push(module: nn.Module, args: Any) -> None:
        stack.append(f"{names.get(id(module), '?') or 'the root'} ({type(module).__name__})")

    def pop(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = [h for m in tree.modules() for h in (m.register_forward_pre_hook(push), m.register_forward_hook(pop))]
    try:
        return _outputs(tree, graph), ""
    except Exception as exc:  # the user's forward failed on the new widths: explained
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"its forward raised {type(exc).__name__} in {' > '.join(stack[-2:])}: {first}"
    finally:
        for handle in handles:
            handle.remove()


def _scale(expected: Any) -> float:
    """Largest |value| over the floating-point tensor leaves (the relative tolerance's base)."""
    leaves = [x for x in pytree.tree_leaves(expected) if isinstance(x, torch.Tensor)]
    return max((float(y.abs().max()) for y in leaves if y.numel() and y.is_floating_point()), default=0.0)


def materialize(model: nn.Module, graph: Graph, *, atol: float = 1e-4, rtol: float = 1e-4) -> Materialized:
    """A copy of `model` with the graph's tensors and updated attributes (see module rules)."""
    user, pruned = dict(_tensors(model)), dict(_tensors(graph.module))
    _check_lowered(user, pruned)
    shared = {n for n in user if n in pruned}
    memo: dict[int, Any] = {id(user[n]): pruned[n] for n in shared}
    tree = copy.deepcopy(model, memo)

    changed = {n for n in shared if tuple(pruned[n].shape) != tuple(user[n].shape)}
    old_widths: dict[str, set[tuple[int, int]]] = {}
    for n in changed:
        pairs = {(int(o), int(p)) for o, p in zip(user[n].shape, pruned[n].shape, strict=False) if o != p}
        old_widths.setdefault(n.rsplit(".", 1)[0] if "." in n else "", set()).update(pairs)
    prefixes = _changed_prefixes(changed)
    readers = _readers(graph)
    originals = dict(model.named_modules())
    for name, module in reversed(list(tree.named_modules())):  # children first: parents read them
        update = updater_for(module)
        if name in prefixes and update is not None:
            try:
                update(module, _Facts(readers, f"{name}." if name else ""))
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                # a class whose layout differs from the family's known one (a fused
                # projection, say): the graph module stays the result, with this reason
                raise MaterializeError(
                    f"updating {name or 'the model'} ({type(module).__name__}) failed: "
                    f"{type(exc).__name__}: {exc}. compiled.module is the graph module; "
                    "report the class to add its updater"
                ) from exc

    renames = drop_removed_blocks(tree, user, pruned)  # after the updaters: they read old names
    modes = {renamed(name, renames): m.training for name, m in model.named_modules()}
    tree.eval()
    actual, failure = _located_call(tree, graph)
    expected = _outputs(graph.module, graph)
    error = float("inf") if failure else max_abs_diff(actual, expected)
    scale = _scale(expected)
    if failure or error > atol + rtol * scale:
        suspects = _suspects(tree, prefixes, old_widths)
        cause = failure or f"its outputs differ from the pruned graph's by {error:.3g}"
        named = (
            "; attributes sparsec has no updater for: " + "; ".join(suspects)
            if suspects else
            "; no attribute holds a pruned width, so forward() derives a size in code (from a "
            "tensor's shape, or a chunk, split or view) that the graph fixed at trace time and "
            "sparsec cannot change in Python"
        )
        raise MaterializeError(
            f"the pruned graph could not be put back into {type(model).__name__}: {cause}"
            f"{named}. Fix: register an updater for the class "
            "(sparsec.materialize.register_updater) that sets these attributes from the "
            "module's tensors, or use compiled.graph.module (eval-mode semantics only)"
        )
    for name, module in tree.named_modules():
        module.train(modes.get(renamed(name, renames), False))

    attributes = {}
    for name, module in tree.named_modules():
        old = renamed(name, renames)
        before = _simple_attributes(originals[old]) if old in originals else {}
        diff = {k: v for k, v in _simple_attributes(module).items() if before.get(k, v) != v}
        if diff:
            attributes[name] = diff
    new_names = {renamed(n, renames): n for n, _ in _tensors(tree)}
    shapes = {new_names.get(n, n): list(pruned[n].shape) for n in sorted(changed)}
    return Materialized(tree, Record(shapes, attributes), error)


def apply_record(model: nn.Module, record: Record) -> nn.Module:
    """Resize `model` (fresh, original architecture) in place as `record` says; returns it.

    Tensors get new empty storage of the recorded shapes on their device (load the weights
    next); attributes are set as recorded; tied tensors stay tied.
    """
    owners = dict(model.named_modules())
    replaced: dict[int, torch.Tensor] = {}
    for name, shape in record.shapes.items():
        prefix, _, leaf = name.rpartition(".")
        owner = owners.get(prefix)
        old = getattr(owner, leaf, None) if owner is not None else None
        if owner is None or not isinstance(old, torch.Tensor):
            raise MaterializeError(
                f"the checkpoint resizes {name}, which this model does not have; it was saved "
                "from another architecture"
            )
        if id(old) not in replaced:
            empty = torch.empty(shape, dtype=old.dtype, device=old.device)
            is_parameter = isinstance(old, nn.Parameter)
            replaced[id(old)] = nn.Parameter(empty, old.requires_grad) if is_parameter else empty
        new = replaced[id(old)]
        if isinstance(new, nn.Parameter):
            setattr(owner, leaf, new)
        else:
            owner._buffers[leaf] = new
    for name, attributes in record.attributes.items():
        owner = owners.get(name)
        if owner is None:
            raise MaterializeError(f"the checkpoint updates module {name!r}, which this model does not have")
        for attr, value in attributes.items():
            setattr(owner, attr, tuple(value) if isinstance(value, list) else value)
    return model
