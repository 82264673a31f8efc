"""A BERT-base FFN (768 → 3072 → GELU → 768, 90% 16×1 blocks): fused chain vs one kernel per layer.

Rules:
- the FFN is `Linear(768, 3072) → GELU (erf) → Linear(3072, 768)` with random weights,
  sparsified by `sparsify{pattern=block,block=[16,1],sparsity=0.9}` and
  `lower-sparse-weights{format=bsr,gate=off}`, input x [tokens, 768] (default 128);
- "fused": `backend="tvm"` as built (the chain packs x once, writes the intermediate as
  the down kernel's panel with bias and GELU fused; backends/tvm/fuse_chains.py); "unfused":
  the same graph built with `PartitionedExecutable.build(..., fuse_chains=False)` (two
  kernels, each packing its own input, and torch's GELU between them); both through the
  partitioned executable, so the Python call overhead is in both; dense ORT and torch
  eager are listed for reference;
- each variant runs `--repeats` calls per round, rounds alternate the variants, the figure
  is the median over all calls; the load average is printed before and after (shared
  machine: compare rows of one run only);
- prints a table and writes benchmarks/results/tvm_chain.json.

Example:
    taskset -c 0 python benchmarks/tvm_chain.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sparsec
from sparsec.backends.tvm import TvmOptions
from sparsec.backends.tvm.partitioned import PartitionedExecutable
from sparsec.backends.tvm.target import build_target, host_cpu

sys.path.insert(0, str(Path(__file__).parent))
from _isolation import timings_ms  # noqa: E402

PIPELINE = (
    "sparsify{pattern=block,block=[16,1],sparsity=0.9},lower-sparse-weights{format=bsr,gate=off}"
)


def _ffn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tvm_chain.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(
        f"host {platform.node()} cpu {host_cpu()} threads {args.threads} tokens {args.tokens} "
        f"load {load_before}",
        flush=True,
    )
    torch.set_num_threads(args.threads)
    model = _ffn()
    x = torch.randn(args.tokens, 768)
    fused = sparsec.compile(model, (x,), pipeline=PIPELINE, backend="tvm", threads=args.threads)
    unfused = PartitionedExecutable.build(
        fused.graph,
        build_target("cpu", args.threads),
        args.threads,
        dense_threads=TvmOptions().dense_threads,  # as the compiled build
        fuse_chains=False,
    )
    dense = sparsec.compile(
        model, (x,), pipeline="none", backend="onnxruntime", threads=args.threads
    )
    with torch.no_grad():
        reference = fused.module(x)
    deviation = {
        "fused": float((fused(x) - reference).abs().max()),
        "unfused": float((unfused(x) - reference).abs().max()),
    }
    variants: dict[str, Callable[[], Any]] = {
        "fused": lambda: fused(x),
        "unfused": lambda: unfused(x),
        "ort_dense": lambda: dense(x),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name] += timings_ms(run, args.repeats, warmup=1)
    with torch.no_grad():
        times["torch_dense"] = timings_ms(lambda: model(x), args.repeats * args.rounds, warmup=1)
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    load_after = os.getloadavg()
    print(f"load after {load_after}; notes: {fused.executable.notes}")
    print(f"{'variant':>12} {'median ms':>10} {'vs ORT dense':>13}")
    for name, value in medians.items():
        print(f"{name:>12} {value:>10.3f} {medians['ort_dense'] / value:>12.2f}x")
    print(f"fused saves {medians['unfused'] - medians['fused']:.3f} ms per FFN call")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "mcpu": host_cpu(),
                "command": " ".join(["python", *sys.argv]),
                "load_before": load_before,
                "load_after": load_after,
                "pipeline": PIPELINE,
                "tokens": args.tokens,
                "threads": args.threads,
                "calls_per_variant": args.repeats * args.rounds,
                "median_ms": medians,
                "max_abs_vs_pruned_torch": deviation,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
