"""Quality and latency of the deployable variants of a trained model, on one table.

Model: the digits residual CNN of `benchmarks/criteria.py`, trained here on scikit-learn's
digits (no download). Quality is test accuracy on the 360 held-out images.

Rules:
- variants, each an artifact saved by sparsec:
  - `dense fp32`: `pipeline="none"` on ONNX Runtime;
  - `dense INT8`: the same with `backend_options={"quantize": "static"}`, calibrated on 8
    training batches. This is the simplest alternative a user has;
  - `pruned fp32`: `--ratio` of the MACs removed (L2 magnitude, `prune-channels{target=macs,round_to=8}`:
    widths that are multiples of 8 run faster in ORT's convolutions);
  - `pruned + recovered`: that model after `sparsec.recover` (KL distillation from the dense
    model on the training images, labels unused);
  - `pruned + recovered + INT8`: the recovered `compiled.module` compiled again with static INT8;
- each artifact is loaded and timed in its own fresh process (`_isolation`), at batch 1 and 8
  with `--threads` threads. Warm-up calls come first, then the median of `--repeats`;
- the table gives accuracy, the latency at each batch, and the speedup over dense fp32 and
  over dense INT8. It is printed and written to benchmarks/results/quality_budget.json.

  - `search @1%` and `search @3%`: what `sparsec.search` chooses at those budgets from its
    default space (dense, dense INT8, 25/50/75% of MACs removed with and without INT8, all
    recovered by distillation, and 70/90% 16×1 block-sparse linears on TVM). Its quality is
    its fidelity metric (top-1 agreement with the dense model on held-out training batches),
    and the table gives the test accuracy of the chosen artifact. The second budget reuses
    the first search's results file: nothing is measured twice.

Not measured here: INT8 with TVM's sparse kernels (not built).

Example:
    taskset -c 0,1 python benchmarks/quality_budget.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import sparsec

sys.path.insert(0, str(Path(__file__).parent))
from _isolation import emit, in_fresh_process, machine, machine_line  # noqa: E402
from criteria import _accuracy, _data, _train  # noqa: E402

SEED = 0
BATCHES = (1, 8)


def _time_child(directory: str, threads: int, repeats: int) -> dict[str, Any]:
    """Median ms of the artifact in `directory` at each batch size, in this (fresh) process."""
    torch.set_num_threads(threads)
    model = sparsec.load(directory)
    result: dict[str, Any] = {}
    for batch in BATCHES:
        x = torch.randn(batch, 1, 8, 8)
        for _ in range(5):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        result[str(batch)] = round(statistics.median(times) * 1e3, 4)
    return result


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("+", "plus").replace("@", "at").replace("%", "pct")


def _build(args: argparse.Namespace, out: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Train, prune, recover and quantize; save every variant under `out`; return accuracies."""
    torch.manual_seed(SEED)
    train, test = _data()
    dense = _train(train, args.epochs)
    example = train[0][0][:2]
    images = [x for x, _ in train]
    calibration = images[:8]
    int8 = {"quantize": "static", "calibration_batches": 8}
    accuracy: dict[str, float] = {}
    extra: dict[str, Any] = {}

    def keep(name: str, compiled: sparsec.CompiledModel) -> None:
        accuracy[name] = _accuracy(compiled, test)
        compiled.save(out / _slug(name))
        print(f"  {name}: {accuracy[name]:.2%}", flush=True)

    ort: dict[str, Any] = {"backend": "onnxruntime", "threads": args.threads}
    keep("dense fp32", sparsec.compile(dense, example, pipeline="none", **ort))
    keep(
        "dense INT8",
        sparsec.compile(
            dense, example, pipeline="none", backend_options=int8, calibration=calibration, **ort
        ),
    )
    pipeline = (
        f"magnitude-importance{{norm=2}},prune-channels{{ratio={args.ratio},target=macs,"
        f"round_to={args.round_to}}}"
    )
    pruned = sparsec.compile(dense, example, pipeline=pipeline, **ort)
    extra["macs_ratio"] = pruned.report.after.macs / pruned.report.before.macs
    keep("pruned fp32", pruned)
    started = time.perf_counter()
    recovery_options = {
        "steps": args.recover_steps,
        "lr": args.recover_lr,
        "loss": "kl",
        "eval_every": 25,
        "patience": 4,
    }
    recovery = sparsec.recover(pruned, teacher=dense, data=images, **recovery_options)
    extra["recovery"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "steps": recovery.steps,
        "best_step": recovery.best_step,
        "held_out_kl": [recovery.initial_held_out, recovery.best_held_out],
    }
    keep("pruned + recovered", pruned)
    keep(
        "pruned + recovered + INT8",
        sparsec.compile(
            pruned.module.eval(),
            example,
            pipeline="none",
            backend_options=int8,
            calibration=calibration,
            **ort,
        ),
    )
    if args.search:
        results = out / "search.json"
        extra["search"] = {}
        for budget in (0.01, 0.03):
            started = time.perf_counter()
            found = sparsec.search(
                dense,
                example,
                calibration=images,
                budget=budget,
                recover=recovery_options,
                threads=args.threads,
                repeats=100,
                results=results,
                progress=lambda message: print(f"    {message}", flush=True),
            )
            name = f"search @{budget:.0%}"
            extra["search"][name] = {
                "message": found.message,
                "seconds": round(time.perf_counter() - started, 1),
                "front": [(m.name, m.quality, m.ms) for m in found.front],
                "measured": [(m.name, m.quality, m.ms, m.error) for m in found.measured],
            }
            print(f"  {name}: {found.message}", flush=True)
            if found.chosen is not None:
                chosen = sparsec.load(found.chosen.artifact)
                accuracy[f"{name}: {found.chosen.name}"] = _accuracy(chosen, test)
                shutil.copytree(found.chosen.artifact, out / _slug(f"{name}: {found.chosen.name}"))
        if results.with_name("search-pareto.png").exists():
            shutil.copy(results.with_name("search-pareto.png"), args.out.with_suffix(".png"))
    return accuracy, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5, help="share of MACs removed")
    parser.add_argument("--epochs", type=int, default=12, help="dense training epochs")
    parser.add_argument(
        "--round-to", type=int, default=8, help="kept channels are a multiple of this"
    )
    parser.add_argument("--recover-steps", type=int, default=600)
    parser.add_argument("--recover-lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument(
        "--no-search", dest="search", action="store_false", help="skip the sparsec.search rows"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "quality_budget.json"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.child:
        emit(_time_child(args.artifact, args.threads, args.repeats))
        return
    before = machine()
    print(f"{machine_line(before)}; digits CNN, {args.threads} threads", flush=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sparsec-quality-") as scratch:
        accuracy, extra = _build(args, Path(scratch))
        latency = {
            name: in_fresh_process(
                Path(__file__),
                [
                    "time",
                    "--artifact",
                    str(Path(scratch) / _slug(name)),
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                ],
            )
            for name in accuracy
        }
    after = machine()
    rows = []
    for name in accuracy:
        row: dict[str, Any] = {"variant": name, "accuracy": accuracy[name]}
        for batch in map(str, BATCHES):
            ms = latency[name][batch]
            row[f"ms_b{batch}"] = ms
            row[f"vs_fp32_b{batch}"] = round(latency["dense fp32"][batch] / ms, 2)
            row[f"vs_int8_b{batch}"] = round(latency["dense INT8"][batch] / ms, 2)
        rows.append(row)
    print(f"\n{machine_line(after)}")
    print(
        f"digits CNN, {args.ratio:.0%} of MACs removed (achieved MACs ratio "
        f"{extra['macs_ratio']:.3f}), recovery {extra['recovery']}"
    )
    print(
        "| variant | test accuracy | ms b1 | ms b8 | vs dense fp32 (b1 / b8) | "
        "vs dense INT8 (b1 / b8) |\n|---|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['variant']} | {row['accuracy']:.2%} | {row['ms_b1']:.4f} | "
            f"{row['ms_b8']:.4f} | {row['vs_fp32_b1']:.2f}× / {row['vs_fp32_b8']:.2f}× | "
            f"{row['vs_int8_b1']:.2f}× / {row['vs_int8_b8']:.2f}× |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine_before": before,
                "machine_after": after,
                "command": " ".join(["python", *sys.argv]),
                "extra": extra,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
