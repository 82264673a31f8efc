"""Dense vs structurally pruned latency through ONNX Runtime, beside the MACs ratio.

Each model is pruned by sparsec and, on the same run, by the peer tool Torch-Pruning
(`pip install -e '.[bench]'`) with the same criterion (group L2 magnitude) and ratio; both
pruned models are then run through the same ONNX Runtime backend. Prints a table (median of
repeated runs, threads fixed, batch sizes named) and writes JSON.

Run: `make bench`, or `.venv/bin/python benchmarks/structured.py [--threads 1] [--repeats 50]`
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sparsec  # noqa: E402
from examples.models import mlp, small_cnn, small_transformer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _isolation import median_ms  # noqa: E402

MODELS = {
    "small_cnn": (small_cnn, lambda b: torch.randn(b, 3, 32, 32)),
    "mlp": (mlp, lambda b: torch.randn(b, 64)),
    "small_transformer": (small_transformer, lambda b: torch.randint(0, 1000, (b, 16))),
}


def _torch_pruning(model: torch.nn.Module, example: torch.Tensor, ratio: float) -> torch.nn.Module:
    """The peer: Torch-Pruning's MagnitudePruner, classifier kept, as its README shows."""
    import torch_pruning as tp

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[last],
    )
    pruner.step()
    return model


def _peer_variant(
    factory, example: torch.Tensor, ratio: float, threads: int
) -> tuple[object | None, str]:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return None, "torch-pruning not installed"
    stage = "pruning failed"
    try:  # the peer failing on a model is a result to report
        pruned = _torch_pruning(factory(), example, ratio)
        stage = "pruned model no longer runs"
        return sparsec.compile(pruned, (example,), pipeline="none", threads=threads), ""
    except Exception as exc:
        return None, f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:70]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/structured.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (factory, make_input) in MODELS.items():
        example = make_input(2)
        dense = sparsec.compile(factory(), (example,), pipeline="none", threads=args.threads)
        variants: list[tuple[str, object | None, str]] = [("dense", dense, "")]
        for r in args.ratios:
            for suffix, extra in (("", ""), ("-round8", ",round_to=8")):
                text = f"magnitude-importance{{norm=2}},prune-channels{{ratio={r}{extra}}}"
                ours = sparsec.compile(factory(), (example,), pipeline=text, threads=args.threads)
                variants.append((f"sparsec-{r:g}{suffix}", ours, ""))
            variants.append(
                (f"torch-pruning-{r:g}", *_peer_variant(factory, example, r, args.threads))
            )
        for batch in args.batches:
            x = make_input(batch)
            dense_ms = median_ms(functools.partial(dense, x), args.repeats, warmup=5)
            for label, compiled, failure in variants:
                row = {"model": name, "variant": label, "batch": batch, "threads": args.threads}
                if compiled is None:
                    rows.append({**row, "failed": failure})
                    continue
                ms = (
                    dense_ms
                    if label == "dense"
                    else median_ms(functools.partial(compiled, x), args.repeats, warmup=5)
                )
                rows.append(
                    {
                        **row,
                        "params": compiled.report.after.parameters,
                        "macs": compiled.report.after.macs,
                        "macs_ratio": compiled.report.after.macs / dense.report.after.macs,
                        "median_ms": ms,
                        "speedup": dense_ms / ms,
                    }
                )
    print(
        f"ONNX Runtime CPU, {args.threads} thread(s), median of {args.repeats} runs; machine: {platform.processor() or platform.machine()}"
    )
    print(
        f"| {'model':18s} | {'variant':18s} | {'batch':>5s} | {'params':>9s} | {'MACs ratio':>10s} | {'ms':>8s} | {'speedup':>8s} |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "failed" in r:
            print(
                f"| {r['model']:18s} | {r['variant']:18s} | {r['batch']:5d} | failed: {r['failed']} | | | |"
            )
            continue
        print(
            f"| {r['model']:18s} | {r['variant']:18s} | {r['batch']:5d} | {r['params']:9,d} | {r['macs_ratio']:10.3f} | {r['median_ms']:8.3f} | {r['speedup']:7.2f}x |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": platform.machine(), "torch": torch.__version__, "rows": rows}, indent=2
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
