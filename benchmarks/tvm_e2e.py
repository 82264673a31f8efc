"""A BERT-base-sized encoder, 90% 16×1 block-sparse linears on TVM vs the dense model on ORT.

Rules:
- the model is `transformers.BertModel(BertConfig())` (hidden 768, 12 layers, FFN 3072;
  `--layers` fewer on a slow machine) with random weights, sequence 128, batch 1 and 8,
  inputs `input_ids` plus explicit token types and positions (so torch.export sees no
  sliced buffers);
- sparse: `sparsify{pattern=block,block=[16,1],sparsity=0.9}` then
  `lower-sparse-weights{format=bsr,gate=off}` compiled with `backend="tvm"` (partitioned:
  our kernels for the 72 linears, torch for attention, norms and GELU); dense:
  `pipeline="none"` on `backend="onnxruntime"`; torch eager dense is listed for reference;
- `--unfused` also times the same sparse build with `fuse_chains=False` (each FFN's up and
  down kernels separate, torch's GELU between them; backends/tvm/layout.py), rebuilt
  from the compiled graph;
- every variant runs with the same thread count; medians of `--repeats` runs after warm-up,
  the load average before and after (on a shared machine compare only rows of one run);
- prints a table and writes benchmarks/results/tvm_e2e.json.

Example:
    taskset -c 0,1 python benchmarks/tvm_e2e.py --threads 1 2
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

import sparsec
from sparsec.backends.tvm import TvmOptions
from sparsec.backends.tvm.partitioned import PartitionedExecutable
from sparsec.backends.tvm.target import build_target, host_cpu

SEQUENCE = 128
SPARSE_PIPELINE = (
    "sparsify{pattern=block,block=[16,1],sparsity=0.9},lower-sparse-weights{format=bsr,gate=off}"
)


class Encoder(torch.nn.Module):
    """BertModel without the pooler, returning the last hidden state only."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="sdpa")
        self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()
        self.vocab = config.vocab_size

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.bert(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids
        ).last_hidden_state


def _inputs(batch: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, SEQUENCE), generator=gen)
    positions = torch.arange(SEQUENCE).expand(batch, SEQUENCE).contiguous()
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "position_ids": positions}


def _median_ms(run: Callable[[], Any], repeats: int) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--unfused", action="store_true", help="also time the build without fused FFN chains"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tvm_e2e.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    print(
        f"host {platform.node()} cpu {host_cpu()} threads {args.threads} "
        f"BERT-base layers {args.layers} seq {SEQUENCE} load {load_before}",
        flush=True,
    )
    model = Encoder(args.layers)
    rows = []
    for threads, batch in itertools.product(args.threads, args.batches):
        torch.set_num_threads(threads)
        inputs = _inputs(batch, model.vocab)
        start = time.perf_counter()
        sparse = sparsec.compile(
            model, inputs, pipeline=SPARSE_PIPELINE, backend="tvm", threads=threads
        )
        sparse_compile_s = time.perf_counter() - start
        start = time.perf_counter()
        dense = sparsec.compile(
            model, inputs, pipeline="none", backend="onnxruntime", threads=threads
        )
        dense_compile_s = time.perf_counter() - start
        with torch.no_grad():
            pruned_reference = sparse.module(**inputs)
        deviation = float((sparse(**inputs) - pruned_reference).abs().max())
        tvm_ms = _median_ms(functools.partial(sparse, **inputs), args.repeats)
        unfused_ms = None
        if args.unfused:
            unfused = PartitionedExecutable.build(
                sparse.graph.module,
                sparse.graph.export_program,
                build_target("cpu", threads),
                threads,
                dense_threads=TvmOptions().dense_threads,  # as the compiled build
                fuse_chains=False,
            )
            unfused_ms = round(_median_ms(functools.partial(unfused, **inputs), args.repeats), 2)
            del unfused
        ort_ms = _median_ms(functools.partial(dense, **inputs), args.repeats)
        with torch.no_grad():
            torch_ms = _median_ms(functools.partial(model, **inputs), args.repeats)
        row = {
            "batch": batch,
            "sequence": SEQUENCE,
            "layers": args.layers,
            "threads": threads,
            "tvm_sparse_ms": round(tvm_ms, 2),
            "tvm_unfused_ms": unfused_ms,
            "tvm_notes": list(sparse.executable.notes),
            "ort_dense_ms": round(ort_ms, 2),
            "torch_dense_ms": round(torch_ms, 2),
            "speedup_vs_ort": round(ort_ms / tvm_ms, 2),
            "max_abs_vs_pruned_torch": deviation,
            "compile_s": {"tvm": round(sparse_compile_s, 1), "ort": round(dense_compile_s, 1)},
        }
        rows.append(row)
        print(row, flush=True)
        _write(args.out, rows, load_before, os.getloadavg())
        del sparse, dense  # BERT-base builds are large: free one before the next compiles
        gc.collect()
    load_after = os.getloadavg()
    print(f"\nload after {load_after}")
    print(
        f"{'thr':>3} {'batch':>5} {'tvm sparse ms':>14} {'unfused ms':>11} {'ort dense ms':>13} "
        f"{'torch ms':>9} {'speedup':>8}"
    )
    for row in rows:
        unfused = "-" if row["tvm_unfused_ms"] is None else f"{row['tvm_unfused_ms']:.2f}"
        print(
            f"{row['threads']:>3} {row['batch']:>5} {row['tvm_sparse_ms']:>14.2f} {unfused:>11} "
            f"{row['ort_dense_ms']:>13.2f} {row['torch_dense_ms']:>9.2f} "
            f"{row['speedup_vs_ort']:>7.2f}x"
        )


def _write(
    out: Path,
    rows: list[dict[str, Any]],
    load_before: tuple[float, ...],
    load_now: tuple[float, ...],
) -> None:
    """The JSON of every row so far (written after each: BERT-base batch 8 runs are long)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "mcpu": host_cpu(),
                "command": " ".join(["python", *sys.argv]),
                "load_before": load_before,
                "load_after": load_now,
                "pipeline": SPARSE_PIPELINE,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
