"""What every backend shares: the Backend and Executable protocols, options, and the registry.

Rules:
- a backend lowers a `Graph` for a target ("cpu" or "cuda") into an `Executable` that takes
  the user's inputs and returns the user's output structure, like `graph.module` does;
- `check(graph)` never raises for a graph it cannot handle: it returns error diagnostics;
- an executable saves itself into a directory (`save`) and returns JSON-safe metadata, from
  which the backend's `load(directory, metadata)` rebuilds it; `files()` names what it writes;
- where a backend cannot honour the target (no GPU provider), it still runs and says so in
  `notes`; it never falls back silently.

Example:
    backend, why = default_backend("cpu", graph)
    executable = backend.lower(graph, "cpu", BackendOptions(threads=4))
    logits = executable(x)
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch.utils import _pytree as pytree

from sparsec.errors import BackendError, ConfigError
from sparsec.latency_model import register_latency_model

if TYPE_CHECKING:
    from sparsec.calibration import Calibration
    from sparsec.ir.graph import Graph
    from sparsec.pipeline import Instrument

__all__ = [
    "MIN_EXPORT_OPSET",
    "TARGETS",
    "Backend",
    "BackendEntry",
    "BackendOptions",
    "Diagnostic",
    "Executable",
    "Severity",
    "available_backends",
    "backend_options_class",
    "backends_with_options",
    "default_backend",
    "dump_spec",
    "flatten_inputs",
    "get_backend",
    "load_spec",
    "register_backend",
    "require_lowerable",
    "unflatten_outputs",
]

TARGETS: tuple[str, ...] = ("cpu", "cuda")
MIN_EXPORT_OPSET = 18  # torch.onnx's dynamo exporter writes opset 18 and later



@dataclass(frozen=True)
class BackendEntry:
    """One backend in the registry: what `get_backend`, configuration and the gate read.

    Each field is "module:attribute", imported on first use so that `import sparsec` stays
    light (tvm takes seconds to import):
    - `backend`: the Backend class (constructed without arguments, or with its options);
    - `options`: its options dataclass, or None when it takes none;
    - `latency_model`: the break-even gate's model of its sparse kernels, registered with
      `sparsec.latency_model` under the backend's name, or None.
    """

    backend: str
    options: str | None = None
    latency_model: str | None = None


_REGISTRY: dict[str, BackendEntry] = {}


def register_backend(name: str, entry: BackendEntry) -> None:
    """Add a backend under `name`: the one place a new backend is named."""
    if name in _REGISTRY:
        raise ValueError(f"a backend is already registered as {name!r}")
    _REGISTRY[name] = entry
    if entry.latency_model is not None:
        register_latency_model(name, entry.latency_model)


register_backend(
    "onnxruntime",
    BackendEntry(
        "sparsec.backends.onnxruntime:OnnxRuntimeBackend",
        options="sparsec.backends.onnxruntime:OrtOptions",
    ),
)
register_backend("torch", BackendEntry("sparsec.backends.torch_backend:TorchBackend"))
register_backend(
    "tvm",
    BackendEntry(
        "sparsec.backends.tvm:TvmBackend",
        options="sparsec.backends.tvm.backend:TvmOptions",
        latency_model="sparsec.backends.tvm.latency_model:TvmLatencyModel",
    ),
)


def _resolve(reference: str) -> Any:
    module_name, attribute = reference.split(":")
    return getattr(importlib.import_module(module_name), attribute)


class Severity(Enum):
    """How much a diagnostic matters: an error means `lower` would fail."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Diagnostic:
    """One finding of `Backend.check`: what a backend cannot do (or does differently) and why."""

    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.message}"


@dataclass(frozen=True)
class BackendOptions:
    """Typed lowering options shared by all backends; None means the backend's default.

    Rules:
    - `threads`: intra-op threads of the runtime (>= 1);
    - `opset`: ONNX opset for backends that go through ONNX (>= 18, what torch.onnx emits);
    - `calibration`: compile()'s calibration batches, for lowerings that need data (ORT's
      static INT8 quantization); the others ignore it;
    - `instruments`: compile()'s timing and IR-dump instruments, which the backend's
      lowering passes run under (`backends/lowering.py`).
    """

    threads: int | None = None
    opset: int | None = None
    calibration: Calibration | None = field(default=None, compare=False, repr=False)
    instruments: tuple[Instrument, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(
                f"BackendOptions.threads must be an int >= 1 or None, not {self.threads!r}"
            )
        if self.opset is not None and (not isinstance(self.opset, int) or self.opset < MIN_EXPORT_OPSET):
            raise ConfigError(
                f"BackendOptions.opset must be an int >= {MIN_EXPORT_OPSET} (torch.onnx's dynamo exporter) or "
                f"None, not {self.opset!r}"
            )


@runtime_checkable
class Executable(Protocol):
    """A lowered program: call it like the traced module; save it into an artifact directory."""

    notes: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def files(self) -> tuple[str, ...]:
        """Names of the files that `save` writes, relative to the directory."""
        ...

    def save(self, directory: Path) -> dict[str, Any]:
        """Write `files()` into `directory`; return JSON-safe metadata that `load` needs."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Lowers graphs for some targets into executables, and loads saved ones back."""

    name: str

    def supports(self, target: str) -> bool: ...

    def check(self, graph: Graph) -> list[Diagnostic]: ...

    def lower(self, graph: Graph, target: str, options: BackendOptions) -> Executable: ...

    def load(self, directory: Path, metadata: dict[str, Any]) -> Executable: ...


def available_backends() -> tuple[str, ...]:
    """Names that `get_backend` accepts."""
    return tuple(sorted(_REGISTRY))


def backends_with_options() -> tuple[str, ...]:
    """Names of the backends that take an options object."""
    return tuple(name for name in available_backends() if _REGISTRY[name].options is not None)


def backend_options_class(name: str) -> type | None:
    """The options dataclass of backend `name`, or None; importing it imports the backend.

    Raises BackendError for an unknown name, ImportError where the backend is not installed.
    """
    reference = _entry(name).options
    return None if reference is None else _resolve(reference)  # type: ignore[no-any-return]


def _entry(name: str) -> BackendEntry:
    if name not in _REGISTRY:
        raise BackendError(
            f"unknown backend {name!r}; valid backends: {', '.join(available_backends())}"
        )
    return _REGISTRY[name]


def get_backend(name: str) -> Backend:
    """The backend registered under `name`; BackendError lists the valid names otherwise."""
    backend: Backend = _resolve(_entry(name).backend)()
    return backend


def require_lowerable(backend: Backend, graph: Graph, target: str) -> None:
    """Raise BackendError if `backend` has no `target` or its `check` finds errors in `graph`.

    Every backend's `lower` starts with this, so the refusal reads the same everywhere.
    """
    if not backend.supports(target):
        raise BackendError(
            f"the {backend.name} backend has no target {target!r}; valid targets: "
            f"{', '.join(TARGETS)}"
        )
    errors = [d for d in backend.check(graph) if d.severity is Severity.ERROR]
    if errors:
        raise BackendError(
            f"the {backend.name} backend cannot lower this graph:\n"
            + "\n".join(f"  {d}" for d in errors)
        )


def default_backend(target: str, graph: Graph | None = None) -> tuple[Backend, str]:
    """The backend used for `target` when the pipeline names none, and why.

    Rules (the measurements behind them are in README.md):
    - "cpu" with sparse linear ops in the graph: "tvm" when apache-tvm is installed: ONNX
      Runtime densifies sparse weights, our TVM kernels skip the zeros
      (benchmarks/tvm_e2e.py: BERT-base, 90% 16×1 blocks, 2.7–4.6× over dense ORT on AVX2);
    - "cpu" otherwise: "onnxruntime" (benchmarks/structured.py: faster than torch eager;
      untuned TVM dense code is 25–110× slower);
    - "cuda" with 2:4 ops: "torch", whose semi-structured kernels use sparse tensor cores;
      otherwise "onnxruntime" (its CUDA provider where installed). Neither was measured
      here: no GPU.
    """
    if target not in TARGETS:
        raise BackendError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")
    sparse = _sparse_op_names(graph)
    if target == "cpu" and sparse:
        if importlib.util.find_spec("tvm") is None:
            return get_backend("onnxruntime"), (
                f"default for 'cpu'; the graph has {len(sparse)} sparse ops, which tvm runs "
                "faster, but apache-tvm is not installed (pip install 'sparsec[tvm]')"
            )
        return get_backend("tvm"), (
            f"default for 'cpu' with {len(sparse)} sparse ops: onnxruntime densifies them, "
            "tvm's kernels skip the zeros (benchmarks/tvm_e2e.py)"
        )
    if target == "cuda" and "nm_linear" in sparse:
        return get_backend("torch"), (
            "default for 'cuda' with 2:4 ops: torch runs them on sparse tensor cores"
        )
    why = "dense graph" if not sparse else f"{len(sparse)} sparse ops"
    return get_backend("onnxruntime"), f"default for {target!r} ({why})"


def gate_latency_model(target: str, backend: str | None) -> str:
    """The cost model `lower-sparse-weights{cost_model=auto}` uses: the one describing the
    kernels that will run the sparse ops.

    Rules: "tvm" when the backend is tvm, or when none is named, the target is "cpu" and
    apache-tvm is installed (then `default_backend` picks tvm for the sparse ops); otherwise
    "reference". Why: gating a TVM build with torch's reference kernels kept layers dense
    that TVM runs 3-7x faster sparse, and a dense layer in a partitioned build runs in torch.
    """
    if target != "cpu":
        return "reference"
    if backend == "tvm" or (backend is None and importlib.util.find_spec("tvm") is not None):
        return "tvm"
    return "reference"


def _sparse_op_names(graph: Graph | None) -> list[str]:
    """Op names (`bsr_linear`, ...) of the sparsec sparse-op calls in `graph`."""
    if graph is None:
        return []
    return [
        node.target._opname  # type: ignore[union-attr]
        for node in graph.module.graph.nodes
        if node.op == "call_function" and getattr(node.target, "namespace", "") == "sparsec"
    ]


def flatten_inputs(
    args: Sequence[Any], kwargs: dict[str, Any], in_spec: pytree.TreeSpec
) -> list[Any]:
    """Flatten a call's inputs in the traced program's order, as the traced module does.

    Rules:
    - inputs traced by position are passed by position, inputs traced by keyword by keyword
      (in any order);
    - the structure must match the traced one exactly; BackendError says what differs.
    """
    _, kwargs_spec = in_spec.children()
    keys = list(kwargs_spec.context or [])
    if sorted(kwargs) != sorted(keys):
        raise BackendError(
            f"keyword inputs {sorted(kwargs)} do not match the traced program's {sorted(keys)}"
        )
    leaves, spec = pytree.tree_flatten((tuple(args), {key: kwargs[key] for key in keys}))
    if spec != in_spec:
        raise BackendError(
            f"input structure differs from the traced one:\n  traced: {in_spec}\n  given:  {spec}"
        )
    return leaves


def unflatten_outputs(values: Sequence[Any], out_spec: pytree.TreeSpec) -> Any:
    """Rebuild the traced program's output structure from flat values."""
    if len(values) != out_spec.num_leaves:
        raise BackendError(
            f"the executable produced {len(values)} outputs, the traced program returns "
            f"{out_spec.num_leaves}"
        )
    return pytree.tree_unflatten(list(values), out_spec)


def dump_spec(spec: pytree.TreeSpec) -> str:
    """A call structure (inputs or outputs) as text for an artifact's manifest."""
    try:
        return pytree.treespec_dumps(spec)
    except Exception as exc:  # pytree raises bare errors for unregistered container types
        raise BackendError(
            f"cannot save the call structure {spec}: {exc}. Fix: register the container type "
            "with torch.utils._pytree.register_pytree_node(..., serialized_type_name=...)."
        ) from exc


def load_spec(text: str) -> pytree.TreeSpec:
    """The call structure saved by `dump_spec`."""
    try:
        return pytree.treespec_loads(text)
    except Exception as exc:  # an unregistered container type, or a tampered spec
        raise BackendError(
            f"cannot rebuild the saved call structure: {exc}. Fix: import the module that "
            "registers the model's output types before loading."
        ) from exc
