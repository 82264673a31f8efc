"""The TVM runtime's CPU thread pool size, set per executable so `threads` means what it says.

Example:
    set_threads(2)   # kernels run parallel loops on 2 workers from now on
"""

from __future__ import annotations

import tvm_ffi

__all__ = ["set_threads"]

_BIG_CORES = 1  # TVM's affinity mode kBig: the pool's workers go to the fast cores


def set_threads(threads: int | None) -> None:
    """Size TVM's thread pool (None keeps TVM's default: one worker per core)."""
    if threads is not None:
        tvm_ffi.get_global_func("runtime.config_threadpool")(_BIG_CORES, threads)
