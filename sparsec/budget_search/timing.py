"""A candidate's latency: its saved artifact timed in a fresh process, threads fixed.

Rules:
- the example inputs are saved once (`save_inputs`, safetensors: `args.<i>` and
  `kwargs.<name>`); `time_artifact` runs `python -m sparsec.budget_search.timing` on the artifact,
  which loads it with `sparsec.load`, sets `threads`, warms up, and prints the median of
  `repeats` calls in milliseconds;
- why a fresh process: runtimes that share one share its cores with each other's idle
  thread pools, which changed dense ORT's latency up to 2.7× next to TVM
  (benchmarks/_isolation.py);
- a child that fails raises SearchError with the tail of its error output.

Example:
    save_inputs(example_inputs, work / "inputs.safetensors")
    ms = time_artifact(work / "cand", work / "inputs.safetensors", threads=1, repeats=50)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparsec.errors import SearchError
from sparsec.ir.inputs import normalize_inputs

__all__ = ["load_inputs", "save_inputs", "time_artifact"]


def save_inputs(example_inputs: Any, path: Path) -> None:
    """The example inputs as one safetensors file (tensors only)."""
    args, kwargs = normalize_inputs(example_inputs)
    tensors = {f"args.{i}": value for i, value in enumerate(args)}
    tensors.update({f"kwargs.{name}": value for name, value in kwargs.items()})
    bad = [name for name, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise SearchError(
            f"the search times candidates on the example inputs, which must all be tensors; "
            f"{bad} are not. Fix: pass tensors (or a dict of tensors) as example_inputs."
        )
    save_file({name: value.contiguous() for name, value in tensors.items()}, str(path))


def load_inputs(path: Path) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    tensors = load_file(str(path))
    args = [tensors[f"args.{i}"] for i in range(sum(k.startswith("args.") for k in tensors))]
    kwargs = {k.removeprefix("kwargs."): v for k, v in tensors.items() if k.startswith("kwargs.")}
    return args, kwargs


def time_artifact(directory: Path, inputs: Path, *, threads: int, repeats: int) -> float:
    """Median milliseconds per call of the artifact in `directory`, in a fresh process."""
    command = [
        sys.executable,
        "-m",
        "sparsec.budget_search.timing",
        str(directory),
        str(inputs),
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SearchError(
            f"timing {directory} failed (exit {done.returncode}): {done.stderr[-1500:]}"
        )
    return float(json.loads(lines[-1])["ms"])


def _child() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact", type=Path)
    parser.add_argument("inputs", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    import sparsec

    model = sparsec.load(options.artifact)
    args, kwargs = load_inputs(options.inputs)
    with torch.no_grad():
        for _ in range(3):
            model(*args, **kwargs)
        times = []
        for _ in range(options.repeats):
            start = time.perf_counter()
            model(*args, **kwargs)
            times.append(time.perf_counter() - start)
    print(json.dumps({"ms": statistics.median(times) * 1e3}), flush=True)


if __name__ == "__main__":
    _child()
