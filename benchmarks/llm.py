"""LLM pruning on a trained model: width, depth and fine-grained sparsity, quality and speed.

Rules:
- the model is `_docstring_lm`'s byte-level LLaMA with grouped-query attention (`--layers`
  decoder layers, default 8), trained `--steps` steps on the standard library's docstrings;
  quality is held-out perplexity per byte (lower is better), on 16 batches of 16 windows;
- every variant is one `sparsec.compile` of the same dense model, calibrated (where the
  pipeline reads data) on 8 training batches:
  - width 25% and 50% (`prune-channels{ratio}`) by magnitude, by a calibrated criterion
    (`wanda-importance`, `activation-importance`), and by Wanda with compensation
    (`reconstruct=true`: a ridge least-squares refit of every layer that reads pruned
    channels, o_proj and down_proj among them);
  - depth: 25% of the decoder layers by each block criterion (`prune-blocks`);
  - fine-grained: 50% unstructured and 2:4 by Wanda and by SparseGPT, lowered to sparse ops
    where the TVM break-even gate says they pay (`lower-sparse-weights`), run by TVM;
  - the baselines a user has without sparsec: the dense model in ONNX Runtime, and its
    dynamic INT8 quantization (`OrtOptions(quantize="dynamic")`);
- latency: each saved artifact is loaded with `sparsec.load` and timed in its own fresh
  process (`_isolation`) at batch 1 and 8 (64 bytes), `--threads` threads, median of
  `--repeats` calls; training uses every core, timing only `--threads`;
- prints a table with the machine and writes benchmarks/results/llm.json.

Example:
    taskset -c 0,1 python benchmarks/llm.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sparsec
from sparsec.calibration import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import _docstring_lm as lm  # noqa: E402
from _isolation import emit, in_fresh_process, machine, machine_line, median_ms, write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "llm.json"
BATCHES = (1, 8)
LOWER = "lower-sparse-weights"  # the break-even gate, measured with TVM's kernels

# (family, variant, pipeline, backend, backend options)
VARIANTS: tuple[tuple[str, str, str, str, dict[str, Any] | None], ...] = (
    ("baseline", "dense", "none", "onnxruntime", None),
    ("baseline", "dense, ORT dynamic INT8", "none", "onnxruntime", {"quantize": "dynamic"}),
    *(
        (f"width {int(r * 100)}%", name, f"{criterion},prune-channels{{ratio={r}{extra}}}", "onnxruntime", None)
        for r in (0.25, 0.5)
        for name, criterion, extra in (
            ("magnitude", "magnitude-importance", ""),
            ("wanda", "wanda-importance", ""),
            ("activation", "activation-importance", ""),
            ("wanda + compensation", "wanda-importance", ",reconstruct=true"),
        )
    ),
    *(
        ("depth 25%", metric, f"prune-blocks{{ratio=0.25,metric={metric}}}", "onnxruntime", None)
        for metric in ("block-influence", "angular", "loss-delta")
    ),
    *(
        (family, method, f"sparsify{{{pattern},method={method}}},{LOWER}", "tvm", None)
        for family, pattern in (
            ("50% unstructured", "pattern=unstructured,sparsity=0.5"),
            ("2:4", "pattern=nm,n=2,m=4"),
        )
        for method in ("wanda", "sparsegpt")
    ),
)


def time_child(path: str, batch: int, threads: int, repeats: int) -> dict[str, Any]:
    """Median milliseconds of the loaded artifact at `batch` windows of SEQUENCE bytes."""
    torch.set_num_threads(threads)
    loaded = sparsec.load(path)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, lm.SEQUENCE)))
    return {"median_ms": median_ms(lambda: loaded(input_ids=ids), repeats)}


def latency(artifact: Path, args: argparse.Namespace) -> dict[str, float]:
    return {
        f"b{b}_ms": in_fresh_process(
            Path(__file__), [str(artifact), str(b), str(args.threads), str(args.repeats)]
        )["median_ms"]
        for b in BATCHES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    lm.add_run_options(parser)
    parser.add_argument("--only", nargs="*", default=None,
                        help="families to run besides the baselines, by substring (e.g. depth)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        path, batch, threads, repeats = args.child
        emit(time_child(path, int(batch), int(threads), int(repeats)))
        return
    host = machine()
    print(machine_line(host), flush=True)
    dense, train_s, train, held = lm.trained(args)  # on every core; timing on --threads
    torch.set_num_threads(args.threads)
    test = lm.windows(held, count=16, batch=16, seed=7)
    batches = lm.windows(train, count=8, batch=16, seed=3)
    calibration = Calibration(batches, loss_fn=lm.next_token_loss)  # the loss: loss-delta's
    dense_ppl = lm.perplexity(dense, test)
    print(f"trained {args.steps} steps in {train_s:.0f} s; dense perplexity {dense_ppl:.3f}", flush=True)
    params = sum(p.numel() for p in dense.parameters())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sparsec-llm-") as tmp:
        for index, (family, variant, pipeline, backend, options) in enumerate(VARIANTS):
            if args.only and family != "baseline" and not any(o in family for o in args.only):
                continue
            started = time.perf_counter()
            compiled = sparsec.compile(
                dense, batches[0], pipeline=pipeline, backend=backend,
                backend_options=options, calibration=calibration,
                threads=args.threads, progress=False,
            )
            compile_s = time.perf_counter() - started
            row = {
                "family": family, "variant": variant, "pipeline": pipeline, "backend": backend,
                "params": compiled.report.after.parameters / params,
                "ppl_module": lm.perplexity(compiled.module, test),
                "ppl_deployed": lm.perplexity(compiled, test),
                "compile_s": round(compile_s, 1),
                **latency(compiled.save(Path(tmp) / str(index)), args),
            }
            rows.append(row)
            print(f"{family} / {variant}: ppl {row['ppl_deployed']:.3f}, "
                  f"batch 1 {row['b1_ms']:.2f} ms, batch 8 {row['b8_ms']:.2f} ms", flush=True)
    for row in rows:
        for b in BATCHES:
            row[f"b{b}_speedup"] = rows[0][f"b{b}_ms"] / row[f"b{b}_ms"]
    print("| family | variant | backend | params kept | perplexity | batch 1 ms | batch 8 ms |")
    print("|---|---|---|---:|---:|---:|---:|")
    for row in rows:
        timing = [f"{row[f'b{b}_ms']:.2f} ({row[f'b{b}_speedup']:.2f}×)" for b in BATCHES]
        print(f"| {row['family']} | {row['variant']} | {row['backend']} | {row['params']:.2f} | "
              f"{row['ppl_deployed']:.3f} | " + " | ".join(timing) + " |")
    write_results(
        args.out, host, machine(), layers=args.layers, steps=args.steps, train_s=round(train_s, 1),
        threads=args.threads, repeats=args.repeats, dense_ppl=dense_ppl, rows=rows,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
