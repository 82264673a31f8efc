"""The IR: an ATen-level torch.fx graph with parameters as get_attr nodes.

Rules:
- a Graph owns its GraphModule; every edit goes through `Graph.rewrite()`, which bumps
  `version` so cached analyses know they are stale;
- `node.meta["val"]` holds a fake tensor for every value, symbolic in dynamic dims;
  `verify()` recomputes them and raises `VerificationError` naming the node that fails;
- the module stays a runnable, trainable torch module with the user's call signature.

Example:
    graph = sparsec.frontends.trace(model, (x,))
    with graph.rewrite("my-pass") as rw:
        rw.slice_parameter("fc.weight", axis=0, keep=[0, 2, 3])
    graph.verify()
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from sparsec.errors import VerificationError
from sparsec.ir.text import format_graph, format_value

__all__ = ["Graph", "InputSpec", "describe_node"]


@dataclass(frozen=True)
class InputSpec:
    """One flat input of the traced program: its name, dtype and shape (dynamic dims named)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


def describe_node(node: fx.Node) -> str:
    """`%conv2d_1 = aten.conv2d.default(%relu, @c2.weight, ...)` for error messages."""
    args = ", ".join(
        (f"@{a.target}" if a.op == "get_attr" else f"%{a.name}") if isinstance(a, fx.Node) else repr(a)
        for a in node.args
    )
    return f"%{node.name} = {node.target}({args})"


class _FakePropagator(fx.Interpreter):
    """Runs the graph on fake tensors and stores each result in `node.meta['val']`."""

    def __init__(self, module: fx.GraphModule, fake_mode: Any, inputs: list[Any]) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.fake_mode = fake_mode
        self.inputs = iter(inputs)

    def get_attr(self, target: Any, args: Any, kwargs: Any) -> Any:
        real = super().get_attr(target, args, kwargs)
        if isinstance(real, torch.Tensor):
            return self.fake_mode.from_tensor(real, static_shapes=True)
        return real

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "placeholder":
            return next(self.inputs)
        try:
            try:
                result = super().run_node(n)
            except Exception:
                result = self._run_static(n)
        except Exception as exc:  # any failure here is a shape or type error at this node
            shapes = ", ".join(
                f"%{a.name}: {format_value(a.meta.get('val'), {})}"
                for a in n.all_input_nodes
            )
            raise VerificationError(
                f"shape propagation failed at {describe_node(n)} (inputs {shapes}): {exc}. "
                "A rewrite left this node's operands inconsistent; run with verify_each=True "
                "to find the pass that did it."
            ) from exc
        if n.op != "output":
            n.meta["val"] = result
        return result

    def _run_static(self, n: fx.Node) -> Any:
        """Run a node whose kernel refuses symbolic sizes (aten.lstm) on static inputs.

        Its inputs become fake tensors of their example sizes; its outputs are then static,
        which only costs dynamic dims downstream in the metadata (export redoes them).
        """
        def static(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in value.shape):
                hints = [int(s.node.hint) if isinstance(s, torch.SymInt) else int(s) for s in value.shape]
                return self.fake_mode.from_tensor(torch.empty(hints, dtype=value.dtype), static_shapes=True)
            return value

        args, kwargs = self.fetch_args_kwargs_from_env(n)
        args, kwargs = torch.utils._pytree.tree_map(static, (args, kwargs))
        with self.fake_mode:
            return getattr(self, n.op)(n.target, args, kwargs)


MASKS_META = "sparsec.masks"
"""Key in `GraphModule.meta`: weight target -> its sparsity mask (`sparsec.ops.masks.WeightMask`).
Part of the IR state: edited only through `Rewriter.set_mask` / `drop_mask`, restored with
the graph when a rewrite fails."""


class _Snapshot:
    """The graph structure and references to every tensor: enough to undo a failed rewrite."""

    def __init__(self, module: fx.GraphModule) -> None:
        with warnings.catch_warnings():  # torch's own pytree deprecation notice on copy
            warnings.simplefilter("ignore", FutureWarning)
            self.graph = copy.deepcopy(module.graph)  # node meta is copied shallowly: cheap
        self.tensors = {
            name: (owner, leaf, getattr(owner, leaf))
            for name, owner, leaf in _tensor_slots(module)
        }
        self.masks = dict(module.meta.get(MASKS_META, {}))

    def restore(self, module: fx.GraphModule) -> None:
        for name, owner, leaf in _tensor_slots(module):
            if name not in self.tensors:
                delattr(owner, leaf)
        for owner, leaf, value in self.tensors.values():
            if isinstance(value, torch.nn.Parameter):
                setattr(owner, leaf, value)
            else:
                owner._buffers[leaf] = value
        module.graph = self.graph
        module.meta[MASKS_META] = self.masks
        module.recompile()


def _tensor_slots(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    slots = []
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for leaf in [*owner._parameters, *owner._buffers]:
            slots.append((f"{prefix}.{leaf}" if prefix else leaf, owner, leaf))
    return slots


@dataclass
class Graph:
    """A traced program: the GraphModule plus what is needed to run, check and re-export it."""

    module: fx.GraphModule
    example_args: tuple[Any, ...]
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic_shapes: Any = None
    symbol_names: dict[str, str] = field(default_factory=dict)
    input_specs: tuple[InputSpec, ...] = ()
    output_names: tuple[str, ...] = ()
    # per output, the dim names an imported model declared (None: static or unnamed)
    output_dims: tuple[tuple[str | None, ...], ...] = ()
    notes: tuple[str, ...] = ()  # what the front end changed to trace the model
    version: int = 0
    _exported: tuple[Any, torch.export.ExportedProgram] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    # what the last shape propagation saw (`_shape_inputs`): verify() skips an identical one
    _propagated: Any = field(default=None, init=False, repr=False, compare=False)

    # ----- reading -----
    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.module.graph.nodes)

    def node(self, name: str) -> fx.Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named %{name} in the graph")

    def tensor(self, target: str) -> torch.Tensor:
        """The parameter or buffer that a get_attr target names."""
        obj: Any = self.module
        for part in target.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, torch.Tensor):
            raise KeyError(f"@{target} is not a tensor attribute of the graph module")
        return obj

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def num_nodes(self) -> int:
        return sum(1 for n in self.module.graph.nodes if n.op == "call_function")

    def __str__(self) -> str:
        return format_graph(self.module, self.symbol_names)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    # ----- checking -----
    def copy(self, device: torch.device | None = None) -> Graph:
        """A copy that passes may rewrite while this graph stays as it is (a backend lowers a
        copy: the artifact keeps the unlowered program); `device` moves the copy.

        The code and modules are copied; the tensors are shared unless the copy moves, so
        lowering costs no second copy of the weights. That is safe because the Rewriter
        replaces tensors and never writes into them.
        """
        shared = {} if device is not None else {id(t): t for t in _tensors(self.module)}
        with warnings.catch_warnings():  # torch's own pytree deprecation notice on copy
            warnings.simplefilter("ignore", FutureWarning)
            twin = dataclasses.replace(self, module=copy.deepcopy(self.module, shared))
        if device is not None:
            twin.module.to(device)
            twin.propagate_shapes(device)
        return twin

    def propagate_shapes(self, device: torch.device | None = None) -> None:
        """Recompute `node.meta['val']` for every node from the inputs' symbolic shapes
        (on `device`, else on the device each input was traced on).

        Runs in a fresh ShapeEnv each time (settings as torch.export's): a fake kernel that
        specialises a size (some pad and upsample kernels do) must not leak into the
        program's inputs, which the module checks its inputs against.
        """
        placeholders = [n for n in self.module.graph.nodes if n.op == "placeholder"]
        traced = [n.meta.get("val") for n in placeholders]
        if detect_fake_mode(traced) is None:
            raise VerificationError(
                "the graph's inputs carry no fake tensors in node.meta['val']; "
                "build graphs with sparsec.frontends.trace()"
            )
        shape_env = ShapeEnv(duck_shape=False, prefer_deferred_runtime_asserts_over_guards=True, trace_asserts=True)
        fake_mode = FakeTensorMode(shape_env=shape_env, export=True)
        names: dict[str, str] = {}
        inputs = [self._fresh_input(value, fake_mode, names, device) for value in traced]
        with fake_mode:
            _FakePropagator(self.module, fake_mode, inputs).run(*inputs)
        for node, value in zip(placeholders, inputs, strict=True):
            node.meta["val"] = value
        self.symbol_names = names
        self._propagated = self._shape_inputs()

    def _shape_inputs(self) -> tuple[str, tuple[Any, ...]]:
        """Everything a shape propagation reads besides the example inputs: the graph's code
        (ops, arguments, constants) and the shape, dtype and device of each attribute read.
        Equal tuples propagate to equal shapes."""
        attributes: list[tuple[Any, ...]] = []
        for node in self.module.graph.nodes:
            if node.op == "get_attr":
                try:
                    tensor = self.tensor(str(node.target))
                except (AttributeError, KeyError):
                    attributes.append((node.target, None))
                    continue
                attributes.append((node.target, tuple(tensor.shape), tensor.dtype, tensor.device))
        return str(self.module.graph), tuple(attributes)

    def _fresh_input(
        self, value: Any, fake_mode: FakeTensorMode, names: dict[str, str], device: torch.device | None
    ) -> Any:
        """A fake input in `fake_mode` with the same dynamic dims as the traced one.

        The new symbols get the names of the old ones in `names`; the map is rebuilt on every
        propagation so a new symbol can never inherit the name of an unrelated old one.
        """
        if not isinstance(value, torch.Tensor):
            return value
        dims = [DimDynamic.DYNAMIC if isinstance(s, torch.SymInt) else DimDynamic.STATIC for s in value.shape]
        hints = [int(s.node.hint) if isinstance(s, torch.SymInt) else int(s) for s in value.shape]
        real = torch.empty(hints, dtype=value.dtype, device=device or value.device)
        fresh = fake_mode.from_tensor(real, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims))
        for old, new in zip(value.shape, fresh.shape, strict=True):
            if isinstance(old, torch.SymInt) and isinstance(new, torch.SymInt):
                names[str(new)] = self.symbol_names.get(str(old), str(old))
        return fresh

    def verify(self) -> None:
        """Lint the graph and re-propagate shapes; raise VerificationError naming the bad node.

        The propagation is skipped when nothing it reads changed since the last one (the
        Rewriter propagates after every rewrite, so VerifyEach would repeat it).
        """
        try:
            self.module.graph.lint()
        except Exception as exc:
            raise VerificationError(f"graph lint failed: {exc}") from exc
        for node in self.module.graph.nodes:
            if node.op == "get_attr":
                try:
                    self.tensor(str(node.target))
                except (AttributeError, KeyError) as exc:
                    raise VerificationError(
                        f"{describe_node(node)} refers to a missing attribute @{node.target}"
                    ) from exc
        if self._propagated != self._shape_inputs():  # else the last propagation still holds
            self.propagate_shapes()

    # ----- editing -----
    @contextlib.contextmanager
    def rewrite(self, owner: str) -> Iterator[Any]:
        """Open a Rewriter; on a clean exit with edits, recompile, re-propagate and bump version.

        If the block or the re-propagation fails, the graph and its tensors are restored, so a
        failed pass leaves the graph exactly as it was (and cached analyses stay true).
        """
        from sparsec.ir.rewriter import Rewriter

        snapshot = _Snapshot(self.module)
        rewriter = Rewriter(self, owner)
        try:
            yield rewriter
            rewriter.finish()
        except BaseException:
            snapshot.restore(self.module)
            raise

    # ----- leaving the IR -----
    def export_program(self) -> torch.export.ExportedProgram:
        """Re-export the (possibly rewritten) module with the same dynamic dimensions.

        The program is cached until the graph's version or any of its tensors (by identity
        and storage) changes: lowering and saving the same build export it once. Callers
        must not mutate the returned program.
        """
        key = (
            self.version,
            tuple(
                (name, id(tensor), tensor.data_ptr())
                for name, tensor in self.module.state_dict(keep_vars=True).items()
            ),
        )
        if self._exported is None or self._exported[0] != key:
            program = torch.export.export(
                self.module,
                self.example_args,
                self.example_kwargs or None,
                dynamic_shapes=self.dynamic_shapes,
                strict=False,
            )
            self._exported = (key, program)
        return self._exported[1]


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every tensor the module holds: parameters, buffers and plain tensor attributes."""
    yield from module.parameters()
    yield from module.buffers()
    for sub in module.modules():
        yield from (v for v in vars(sub).values() if isinstance(v, torch.Tensor))
