"""The TVM runtime's CPU thread pool size, set per executable so `threads` means what it says.

Rules:
- TVM does not pin threads (`TVM_BIND_THREADS=0`, unless the environment already sets
  it): when it does, its first parallel launch pins the *calling* thread to one core, and
  every thread torch or ONNX Runtime starts afterwards inherits that one-core mask. In a
  partitioned build (torch runs the dense ops) and in benchmarks that compare against
  torch and ORT in the same process, 2 threads then ran 2–10× slower than 1 (BERT-base,
  batch 1: 624 ms with 2 threads vs 58 ms with 1). TVM reads the variable at each launch.

- TVM sizes its pool once, when it is first used, to `TVM_NUM_THREADS` or else to *half*
  the hardware threads on x86 (it assumes hyper-threading), and `config_threadpool`
  cannot grow it: on this 2-core VM every "2-thread" kernel ran on one worker. So
  `TVM_NUM_THREADS` defaults to the cores this process may run on (unless set already),
  before TVM's pool exists.

Example:
    set_threads(2)   # kernels run parallel loops on 2 workers from now on
"""

from __future__ import annotations

import os

import tvm_ffi

os.environ.setdefault("TVM_BIND_THREADS", "0")
os.environ.setdefault(
    "TVM_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1),
)

__all__ = ["set_threads"]

_BIG_CORES = 1  # TVM's affinity mode kBig: the pool's workers go to the fast cores


def set_threads(threads: int | None) -> None:
    """Size TVM's thread pool (None keeps TVM's default: one worker per core)."""
    if threads is not None:
        tvm_ffi.get_global_func("runtime.config_threadpool")(_BIG_CORES, threads)
