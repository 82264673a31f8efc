"""Device code of a CUDA build, compiled here with nvcc.

What TVM 0.27's wheel does, and so why this module exists: `tvm.compile` for CUDA on a host
without the CUDA driver produces a fallback module that carries CUDA C source (its binary
formats are empty); the runtime compiles that source with NVRTC when the library is loaded on
a GPU host. Building a binary CUDA module needs `libtvm_runtime_cuda.so`, which needs the
driver (`libcuda.so.1`), absent on a GPU-less build host. So the build compiles the same
source with nvcc to a fatbin for the target arch, proving the device code compiles and
shipping it as `tvm_device.fatbin` beside the library.

Example:
    fatbin = compile_device_code(library, cuda_target)   # bytes, or BackendError naming why
"""

from __future__ import annotations

import shutil
from typing import Any

from tvm.target import Target

from sparsec.errors import BackendError

__all__ = ["DEVICE_FILE", "compile_device_code", "device_source"]

DEVICE_FILE = "tvm_device.fatbin"


def _cuda_module(module: Any) -> Any:
    if module.kind == "cuda":
        return module
    for child in module.imports:
        found = _cuda_module(child)
        if found is not None:
            return found
    return None


def device_source(library: Any) -> str:
    """The CUDA C source a CUDA build's library carries."""
    module = _cuda_module(library.mod if hasattr(library, "mod") else library)
    if module is None:
        raise BackendError("the CUDA build holds no CUDA module; nothing was compiled for the GPU")
    return str(module.inspect_source())


def compile_device_code(library: Any, target: Target) -> bytes:
    """nvcc's fatbin of the library's CUDA source for the CUDA `target`'s arch."""
    if shutil.which("nvcc") is None:
        raise BackendError(
            "nvcc is not installed, so the CUDA device code cannot be compiled on this host. "
            "Fix: install the CUDA toolkit (nvcc), or build for target 'cpu'."
        )
    from tvm.support import nvcc

    arch = str(target.attrs["arch"])
    try:
        with target:  # nvcc's flags read the compute version from the current target
            return bytes(
                nvcc.compile_cuda(device_source(library), "fatbin", arch=arch, compiler="nvcc")
            )
    except RuntimeError as exc:  # nvcc's diagnostics come back as RuntimeError
        raise BackendError(f"nvcc could not compile the CUDA device code: {exc}") from exc
