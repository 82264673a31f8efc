"""A TVM build of a graph with no sparse ops: the dense program runs on ONNX Runtime (or torch).

Why: a `backend="tvm"` request must build (the user named it), but TVM has nothing to add to
a dense graph: partitioned mode has no kernels to call, and Relax's untuned dense loops ran
a 768 → 3072 → 768 FFN at 1024 tokens in 19 s against ONNX Runtime's 67 ms.

Rules:
- the graph is lowered by "onnxruntime", or by "torch" when ONNX export fails, with all of
  the build's threads (no TVM pool competes for them);
- the executable's notes say why and which runtime runs it; its artifact metadata is
  `{"mode": "dense", "backend": name, "metadata": that runtime's own}`, and `load` hands it
  back to that runtime.

Example:
    executable = lower_dense(graph, "cpu", options)   # notes: "no sparse linear ops ..."
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsec.errors import ArtifactError, BackendError

from ..base import BackendOptions, Executable, get_backend

if TYPE_CHECKING:
    from sparsec.ir.graph import Graph

__all__ = ["DENSE_MODE", "DenseExecutable", "load_dense", "lower_dense"]

DENSE_MODE = "dense"


class DenseExecutable:
    """Another runtime's executable, saved and loaded through the TVM backend."""

    def __init__(self, inner: Executable, backend: str, notes: list[str]) -> None:
        self._inner = inner
        self._backend = backend
        self.notes = notes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **kwargs)

    def files(self) -> tuple[str, ...]:
        return tuple(self._inner.files())  # type: ignore[attr-defined]

    def save(self, directory: Path) -> dict[str, Any]:
        metadata = self._inner.save(directory)
        return {"mode": DENSE_MODE, "backend": self._backend, "metadata": metadata}


def lower_dense(graph: Graph, target: str, options: BackendOptions) -> DenseExecutable:
    """The dense graph lowered by ONNX Runtime (torch when ONNX export fails), with a note."""
    why = (
        "no sparse linear ops in the graph (none was sparsified, or the break-even gate kept "
        "every layer dense), so TVM's kernels have nothing to run"
    )
    try:
        inner = get_backend("onnxruntime").lower(graph, target, options)
        return DenseExecutable(inner, "onnxruntime", [f"{why}: ONNX Runtime runs the program"])
    except BackendError as exc:
        first = str(exc).splitlines()[0][:200]
        inner = get_backend("torch").lower(graph, target, options)
        return DenseExecutable(
            inner, "torch", [f"{why}; ONNX Runtime failed ({first}), so torch runs the program"]
        )


def load_dense(directory: Path, metadata: dict[str, Any]) -> Executable:
    """The runtime's executable saved by `DenseExecutable.save`."""
    backend, inner = metadata.get("backend"), metadata.get("metadata")
    if backend not in ("onnxruntime", "torch") or not isinstance(inner, dict):
        raise ArtifactError(
            f"the dense TVM build in {directory} names no runtime it was lowered by "
            f"({backend!r}). Fix: rebuild the artifact."
        )
    return get_backend(backend).load(directory, inner)
