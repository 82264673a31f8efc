"""Apache TVM backend: our block-sparse TIR kernels, Relax import, LLVM and CUDA builds.

Modules: `kernels` / `cuda_kernels` (TIR), `importer` (exported program → Relax),
`partitioned` and `relax_executable` (the two ways to run), `target` (host detection and
load checks), `params_io` (weights beside the library), `threads`, `backend` (the Backend),
`cost_model` (the break-even gate's "tvm" model, registered on import).
"""

from __future__ import annotations

from sparsec.cost_model import register_cost_model

from . import threads  # noqa: F401 - first: sizes TVM's thread pool before anything uses it
from .backend import TvmBackend, TvmMode, TvmOptions
from .cost_model import TvmCostModel

register_cost_model("tvm", TvmCostModel)

__all__ = ["TvmBackend", "TvmCostModel", "TvmMode", "TvmOptions"]
