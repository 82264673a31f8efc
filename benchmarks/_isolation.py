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
- `timings_ms(run, repeats, warmup)` calls `run` `warmup` times untimed, then returns the
  milliseconds of `repeats` calls; `median_ms` is their median;
- `write_results(out, before, after, **fields)` writes a run's JSON: the machine before and
  after, the command line, then the benchmark's own fields;
- an ONNX file's latency at a batch is timed by `onnx_median_ms(script, file, batch, threads,
  repeats)`, which runs `script --child FILE BATCH THREADS REPEATS` (the option that
  `add_onnx_child_option` adds); the child answers with `onnx_child(args.child, feed)`;
- `machine()` is what every benchmark prints and stores: CPU model, LLVM's name for it, the
  kernels' ISA, usable cores, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "add_onnx_child_option",
    "emit",
    "in_fresh_process",
    "machine",
    "machine_line",
    "median_ms",
    "onnx_child",
    "onnx_median_ms",
    "time_onnx",
    "timings_ms",
    "write_results",
]


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


def timings_ms(run: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    """Milliseconds of each of `repeats` calls of `run`, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def median_ms(run: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of `repeats` calls of `run`, after `warmup` untimed calls."""
    return statistics.median(timings_ms(run, repeats, warmup))


def write_results(out: Path, before: dict[str, Any], after: dict[str, Any], **fields: Any) -> None:
    """Write a run's JSON to `out`: `machine()` before and after, the command, then `fields`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine_before": before,
                "machine_after": after,
                "command": " ".join(["python", *sys.argv]),
                **fields,
            },
            indent=2,
        )
    )


def time_onnx(path: str, feed: dict[str, Any], threads: int, repeats: int) -> dict[str, float]:
    """Median and minimum milliseconds of ORT runs of the ONNX file `path` on `feed`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    samples = sorted(timings_ms(lambda: session.run(None, feed), repeats))
    return {"median_ms": samples[len(samples) // 2], "min_ms": samples[0]}


def add_onnx_child_option(parser: argparse.ArgumentParser) -> None:
    """The hidden `--child FILE BATCH THREADS REPEATS` that `onnx_median_ms` passes."""
    parser.add_argument(
        "--child", nargs=4, metavar=("FILE", "BATCH", "THREADS", "REPEATS"), help=argparse.SUPPRESS
    )


def onnx_median_ms(script: Path, onnx_file: Path, batch: int, threads: int, repeats: int) -> float:
    """Median milliseconds of `onnx_file` at `batch`, timed by `script`'s child in a fresh process."""
    args = [str(onnx_file), str(batch), str(threads), str(repeats)]
    return float(in_fresh_process(script, args)["median_ms"])


def onnx_child(child: list[str], feed: Callable[[str, int], dict[str, Any]]) -> None:
    """The child's side: time FILE with `time_onnx` on `feed(FILE, BATCH)` and `emit` the result."""
    path, batch, threads, repeats = child
    emit(time_onnx(path, feed(path, int(batch)), int(threads), int(repeats)))
