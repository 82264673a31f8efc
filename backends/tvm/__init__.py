"""Apache TVM backend: our block-sparse TIR kernels, Relax import, LLVM and CUDA builds.

Modules: `kernels` / `cuda_kernels` (TIR), `importer` (exported program → Relax),
`partitioned` and `relax_executable` (the two ways to run), `target` (host detection and
load checks), `params_io` (weights beside the library), `threads`, `backend` (the Backend),
`latency_model` (the break-even gate's "tvm" model, named in the backend registry).
"""

from __future__ import annotations

from . import threads  # noqa: F401 - first: sizes TVM's thread pool before anything uses it
from .backend import TvmBackend, TvmMode, TvmOptions
from .latency_model import TvmLatencyModel

__all__ = ["TvmBackend", "TvmLatencyModel", "TvmMode", "TvmOptions"]
