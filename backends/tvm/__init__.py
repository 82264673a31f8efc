"""Apache TVM backend: our block-sparse TIR kernels, Relax import, LLVM and CUDA builds.

Modules: `kernels` / `cuda_kernels` (TIR), `importer` (exported program → Relax),
`partitioned` and `relax_executable` (the two ways to run), `target` (host detection and
load checks), `params_io` (weights beside the library), `threads`, `backend` (the Backend).
"""

from __future__ import annotations

from .backend import TvmBackend, TvmMode, TvmOptions

__all__ = ["TvmBackend", "TvmMode", "TvmOptions"]
