"""Fair latency comparisons: each runtime timed in a fresh process, the machine described.

Why: runtimes that share a process share its cores with each other's idle thread pools. On
an AVX2 Zen 3, a dense BERT-base on ONNX Runtime took 190 ms at batch 1 in a process where
TVM was never loaded and 513 ms inside a benchmark that had run TVM before it, which made a
2.4x speedup print as 6.3x. So every figure a table compares comes from `in_fresh_process`,
and a same-process control row keeps the contention visible.

Rules:
- `in_fresh_process(script, args)` runs `python script --child ... args` and returns the
  JSON object the child printed as its last stdout line (`emit` prints it); a child that
  fails raises with its stderr's tail;
- `time_onnx(path, feed, threads, repeats)` is the timing a child runs for an ONNX file:
  ONNX Runtime on CPU with `threads` intra-op threads, 3 warm-up runs, then the median
  and minimum of `repeats` runs in milliseconds;
- `machine()` is what every benchmark prints and stores: CPU model, LLVM's name for it, the
  kernels' ISA, usable cores, and the load average.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["emit", "in_fresh_process", "machine", "machine_line", "time_onnx"]


def machine() -> dict[str, Any]:
    """CPU model, LLVM CPU, ISA, cores and the 1/5/15-minute load average, now."""
    from sparsec.gate_cache import cpu_model

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        from sparsec.backends.tvm.isa import isa_of
        from sparsec.backends.tvm.target import host_cpu, host_target

        info["mcpu"], info["isa"] = host_cpu(), isa_of(host_target()).name
    except ImportError:  # apache-tvm not installed
        info["mcpu"] = info["isa"] = None
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine()
    return (
        f"cpu {info['cpu_model']} (mcpu {info['mcpu']}, isa {info['isa']}), "
        f"{info['cores']} cores, load {info['load']}"
    )


def emit(result: dict[str, Any]) -> None:
    """A child's answer: one JSON line, last on stdout."""
    print(json.dumps(result), flush=True)


def in_fresh_process(script: Path, args: list[str], timeout_s: float = 3600) -> dict[str, Any]:
    """Run `script --child <args>` in a new interpreter and return its emitted JSON."""
    command = [sys.executable, str(script), "--child", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def time_onnx(path: str, feed: dict[str, Any], threads: int, repeats: int) -> dict[str, float]:
    """Median and minimum milliseconds of ORT runs of the ONNX file `path` on `feed`."""
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feed)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"median_ms": samples[len(samples) // 2], "min_ms": samples[0]}
