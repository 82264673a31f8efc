"""Depth pruning on a trained model: which blocks each criterion removes, and what it costs.

Rules:
- the model is `_docstring_lm`'s byte-level LLaMA with grouped-query attention, here with
  `--layers` decoder layers (default 8), trained `--steps` steps on the standard library's
  docstrings; quality is held-out perplexity per byte (lower is better);
- oracle: the perplexity with each single block removed (the "perplexity delta"
  criterion, measured directly);
- sparsec: `prune-blocks{ratio=0.25,metric=...}` for both block criteria
  (`block-influence`: ShortGPT's 1 − cos; `angular`), calibrated on 8 training batches,
  then `sparsec.recover` (KL distillation from the dense model, 200 steps);
- baseline: removing the last 25% of the blocks, a common heuristic;
- latency: the dense and pruned ONNX Runtime artifacts, each timed in its own fresh
  process (`_isolation`) at batch 1 and 8 (64 bytes), `--threads` threads, median of
  `--repeats` runs;
- prints a table with the machine and writes benchmarks/results/depth.json.

Example:
    taskset -c 0,1 python benchmarks/depth.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sparsec

sys.path.insert(0, str(Path(__file__).parent))
import _docstring_lm as lm  # noqa: E402
from _isolation import add_onnx_child_option, machine, machine_line, onnx_child, onnx_median_ms  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "depth.json"
RATIO = 0.25
BATCHES = (1, 8)


def without_layers(model: torch.nn.Module, drop: list[int]) -> torch.nn.Module:
    """A copy of the LLaMA without the decoder layers `drop` (the oracle and the baseline)."""
    pruned = copy.deepcopy(model)
    layers = pruned.model.layers
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    pruned.model.layers = torch.nn.ModuleList(kept)
    pruned.config.num_hidden_layers = len(kept)
    if isinstance(getattr(pruned.config, "layer_types", None), list):
        pruned.config.layer_types = [t for i, t in enumerate(pruned.config.layer_types) if i not in drop]
    for index, layer in enumerate(kept):
        layer.self_attn.layer_idx = index
    return pruned.eval()


def token_feed(_file: str, batch: int) -> dict[str, Any]:
    """Random byte ids at `batch`: every model this benchmark times takes the same input."""
    ids = np.random.default_rng(0).integers(0, 256, (batch, lm.SEQUENCE)).astype(np.int64)
    return {"input_ids": ids}


def latency(artifact: Path, args: argparse.Namespace) -> dict[str, float]:
    return {
        f"b{b}_ms": onnx_median_ms(Path(__file__), artifact / "model.onnx", b, args.threads, args.repeats)
        for b in BATCHES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_onnx_child_option(parser)
    lm.add_run_options(parser)
    args = parser.parse_args()
    if args.child:
        onnx_child(args.child, token_feed)
        return
    torch.set_num_threads(args.threads)
    host = machine()
    print(machine_line(host))
    dense, train_s, train, held = lm.trained(args)
    test = lm.windows(held, count=16, batch=16, seed=7)
    calibration = lm.windows(train, count=8, batch=16, seed=3)
    distil = lm.windows(train, count=48, batch=16, seed=5)
    example = calibration[0]
    dense_ppl = lm.perplexity(dense, test)
    oracle = {i: lm.perplexity(without_layers(dense, [i]), test) for i in range(args.layers)}
    remove = round(RATIO * args.layers)
    last = list(range(args.layers - remove, args.layers))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sparsec-depth-") as tmp:
        base = sparsec.compile(dense, example, pipeline=[])
        rows.append({"variant": "dense", "removed": [], "ppl": dense_ppl, **latency(base.save(Path(tmp) / "dense"), args)})
        rows.append({"variant": "last 25% of blocks", "removed": last,
                     "ppl": lm.perplexity(without_layers(dense, last), test)})
        best = sorted(oracle, key=oracle.__getitem__)[:remove]
        rows.append({"variant": "oracle (single-block perplexity)", "removed": sorted(best),
                     "ppl": lm.perplexity(without_layers(dense, best), test)})
        for metric in ("block-influence", "angular"):
            compiled = sparsec.compile(
                dense, example, pipeline=f"prune-blocks{{ratio={RATIO},metric={metric}}}", calibration=calibration
            )
            summary = next(s for name, s in compiled.report.pass_summaries if name.startswith("prune-blocks"))
            removed = sorted(int(path.rsplit(".", 1)[1]) for path in summary["removed"])
            pruned_ppl = lm.perplexity(compiled.module, test)
            sparsec.recover(compiled, teacher=dense, data=distil, steps=200, lr=1e-3, loss="kl",
                            eval_every=25, patience=3, progress=False)
            rows.append({
                "variant": f"sparsec prune-blocks, {metric}", "removed": removed, "ppl": pruned_ppl,
                "ppl_recovered": lm.perplexity(compiled.module, test),
                "scores": {b["block"]: b["score"] for b in summary["blocks"]},
                **latency(compiled.save(Path(tmp) / metric), args),
            })
    for row in rows[1:]:
        for b in BATCHES:
            if f"b{b}_ms" in row:
                row[f"b{b}_speedup"] = rows[0][f"b{b}_ms"] / row[f"b{b}_ms"]
    print(f"dense perplexity {dense_ppl:.3f}; single block removed: "
          + ", ".join(f"{i}: {p:.3f}" for i, p in oracle.items()))
    print("| variant | blocks removed | perplexity | after recovery | batch 1 ms | batch 8 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        timing = [f"{row[f'b{b}_ms']:.2f}" + (f" ({row[f'b{b}_speedup']:.2f}×)" if f"b{b}_speedup" in row else "")
                  if f"b{b}_ms" in row else "-" for b in BATCHES]
        recovered = f"{row['ppl_recovered']:.3f}" if "ppl_recovered" in row else "-"
        print(f"| {row['variant']} | {row['removed']} | {row['ppl']:.3f} | {recovered} | " + " | ".join(timing) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": host, "load_after": machine()["load"], "layers": args.layers, "steps": args.steps,
        "train_s": round(train_s, 1), "threads": args.threads, "repeats": args.repeats,
        "dense_ppl": dense_ppl, "single_block_ppl": oracle, "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
