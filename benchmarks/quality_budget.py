"""Quality and latency of the deployable variants of trained models, one table per model.

Models, trained here without downloads:
- `digits`: the residual CNN of `benchmarks/criteria.py` on scikit-learn's digits; quality is
  test accuracy on the 360 held-out images (higher is better);
- `lm`: a LLaMA-style byte-level language model with grouped-query attention, trained for a
  few minutes on the standard library's docstrings (`_docstring_lm`); quality is perplexity
  per byte on the held-out 10% (lower is better).

Rules:
- variants, each an artifact saved by sparsec:
  - `dense fp32`: `pipeline="none"` on ONNX Runtime;
  - `dense INT8`: the same with `backend_options={"quantize": ...}`: static QDQ calibrated on
    8 training batches for the CNN, dynamic for the language model. This is the simplest
    alternative a user has;
  - `pruned fp32`: `--ratio` of the MACs removed (L2 magnitude,
    `prune-channels{target=macs,round_to=8}`: widths that are multiples of 8 run faster in
    ORT);
  - `pruned + recovered`: that model after `sparsec.recover` (KL distillation from the
    dense model on training inputs, labels unused);
  - `pruned + recovered + INT8`: the recovered `compiled.module`, compiled again with INT8;
  - `search @1%` and `search @3%`: what `sparsec.search` chooses at those budgets from its
    default space (dense, dense INT8, structured ratios with and without INT8, all
    recovered, and 16×1 block-sparse linears on TVM). Its quality is fidelity to the dense
    model on held-out training batches (top-1 agreement for the CNN, perplexity ratio for
    the language model); the table gives the chosen artifact's test quality. The second
    budget reuses the first search's results file, so nothing is measured twice;
- each artifact is timed in its own fresh process (`sparsec.budget_search.timing`) at batch 1
  and 8 with `--threads` threads: warm-up calls, then the median of `--repeats`;
- prints one table per model and writes benchmarks/results/quality_budget.json, plus each
  search's Pareto plot as `quality_budget_<model>.png`.

Not measured here: INT8 with TVM's sparse kernels (not built).

Example:
    taskset -c 0,1 python benchmarks/quality_budget.py --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import sparsec
from sparsec.budget_search import default_space
from sparsec.budget_search.timing import save_inputs, time_artifact

sys.path.insert(0, str(Path(__file__).parent))
import _docstring_lm as lm  # noqa: E402
from _isolation import machine, machine_line, write_results  # noqa: E402
from criteria import _accuracy, _data, _train  # noqa: E402

SEED = 0
BATCHES = (1, 8)
RESULTS = Path(__file__).parent / "results"


@dataclass
class Task:
    """One trained model and how to judge and time its variants."""

    name: str
    dense: torch.nn.Module
    example: Any
    train_inputs: list[Any]
    test: Callable[[Callable[..., Any]], float]
    quality_name: str
    higher_is_better: bool
    int8: dict[str, Any]
    timing_inputs: dict[int, Any]
    recover: dict[str, Any]
    search_space: list[Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _digits(args: argparse.Namespace) -> Task:
    torch.manual_seed(SEED)
    train, test = _data()
    started = time.perf_counter()
    dense = _train(train, args.epochs)
    return Task(
        "digits",
        dense,
        train[0][0][:2],
        [x for x, _ in train],
        lambda model: _accuracy(model, test),
        "test accuracy",
        True,
        {"quantize": "static", "calibration_batches": 8},
        {b: torch.randn(b, 1, 8, 8) for b in BATCHES},
        {"steps": 550, "lr": 3e-3, "loss": "kl", "eval_every": 25, "patience": 4},
        extra={"train_s": round(time.perf_counter() - started, 1)},
    )


def _language_model(args: argparse.Namespace) -> Task:
    train, held = lm.corpus_split()
    started = time.perf_counter()
    dense = lm.train_model(train, steps=args.lm_steps)
    test = lm.windows(held, count=16, batch=16, seed=7)
    inputs = lm.windows(train, count=24, batch=16, seed=3)
    recover = {"steps": 200, "lr": 1e-3, "loss": "kl", "eval_every": 25, "patience": 3}
    return Task(
        "lm",
        dense,
        inputs[0],
        inputs,
        lambda model: lm.perplexity(model, test),
        "held-out perplexity",
        False,
        {"quantize": "dynamic"},
        {b: lm.windows(held, count=1, batch=b, seed=11)[0] for b in BATCHES},
        recover,
        search_space=default_space(
            ratios=(0.25, 0.5), sparsities=(0.9,), recover=True, static_int8=False
        ),
        extra={
            "train_s": round(time.perf_counter() - started, 1),
            "corpus_bytes": [len(train), len(held)],
            "train_steps": args.lm_steps,
        },
    )


TASKS: dict[str, Callable[[argparse.Namespace], Task]] = {
    "digits": _digits,
    "lm": _language_model,
}


def _variants(task: Task, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Build every variant of `task` as an artifact under `out`; return their test quality."""
    quality: dict[str, float] = {}
    ort: dict[str, Any] = {"backend": "onnxruntime", "threads": args.threads}
    calibration = task.train_inputs[:8]

    def keep(name: str, model: Any) -> None:
        quality[name] = task.test(model)
        print(f"  {name}: {task.quality_name} {quality[name]:.4f}", flush=True)
        if isinstance(model, sparsec.CompiledModel):
            model.save(out / _slug(name))

    def int8(model: torch.nn.Module) -> sparsec.CompiledModel:
        return sparsec.compile(
            model,
            task.example,
            pipeline="none",
            backend_options=task.int8,
            calibration=calibration,
            **ort,
        )

    keep("dense fp32", sparsec.compile(task.dense, task.example, pipeline="none", **ort))
    keep("dense INT8", int8(task.dense))
    pipeline = (
        f"magnitude-importance{{norm=2}},prune-channels{{ratio={args.ratio},target=macs,"
        f"round_to=8}}"
    )
    pruned = sparsec.compile(task.dense, task.example, pipeline=pipeline, **ort)
    task.extra["macs_ratio"] = round(pruned.report.after.macs / pruned.report.before.macs, 3)
    keep("pruned fp32", pruned)
    started = time.perf_counter()
    recovery = sparsec.recover(pruned, teacher=task.dense, data=task.train_inputs, **task.recover)
    task.extra["recovery"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "steps": recovery.steps,
        "best_step": recovery.best_step,
        "held_out_kl": [round(recovery.initial_held_out, 4), round(recovery.best_held_out, 4)],
    }
    keep("pruned + recovered", pruned)
    keep("pruned + recovered + INT8", int8(pruned.to_module().eval()))
    if args.search:
        _search(task, args, out, quality)
    return quality


def _search(task: Task, args: argparse.Namespace, out: Path, quality: dict[str, float]) -> None:
    results = out / f"search-{task.name}.json"
    task.extra["search"] = {}
    for budget in (0.01, 0.03):
        started = time.perf_counter()
        found = sparsec.search(
            task.dense,
            task.example,
            calibration=task.train_inputs,
            budget=budget,
            candidates=task.search_space,
            recover=task.recover,
            threads=args.threads,
            repeats=100,
            results=results,
            progress=lambda message: print(f"    {message}", flush=True),
            engine=args.engine,
        )
        name = f"search @{budget:.0%}"
        task.extra["search"][name] = {
            "message": found.message,
            "seconds": round(time.perf_counter() - started, 1),
            "front": [(m.name, m.quality, m.ms) for m in found.front],
            "measured": [(m.name, m.quality, m.ms, m.error) for m in found.measured],
        }
        print(f"  {name}: {found.message}", flush=True)
        if found.chosen is not None:
            label = f"{name}: {found.chosen.name}"
            quality[label] = task.test(sparsec.load(found.chosen.artifact))
            shutil.copytree(found.chosen.artifact, out / _slug(label))
    if found.plot is not None:
        shutil.copy(found.plot, RESULTS / f"quality_budget_{task.name}.png")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def _rows(
    task: Task, quality: dict[str, float], args: argparse.Namespace, out: Path
) -> list[dict[str, Any]]:
    """Time every variant in its own process at each batch; the table's rows."""
    for batch, inputs in task.timing_inputs.items():
        save_inputs(inputs, out / f"inputs-{task.name}-{batch}.safetensors")
    latency = {
        name: {
            batch: time_artifact(
                out / _slug(name),
                out / f"inputs-{task.name}-{batch}.safetensors",
                threads=args.threads,
                repeats=args.repeats,
            )
            for batch in BATCHES
        }
        for name in quality
    }
    rows = []
    for name in quality:
        row: dict[str, Any] = {"variant": name, "quality": quality[name]}
        for batch in BATCHES:
            ms = latency[name][batch]
            row[f"ms_b{batch}"] = round(ms, 4)
            row[f"vs_fp32_b{batch}"] = round(latency["dense fp32"][batch] / ms, 2)
            row[f"vs_int8_b{batch}"] = round(latency["dense INT8"][batch] / ms, 2)
        rows.append(row)
    return rows


def _print(task: Task, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    better = "higher" if task.higher_is_better else "lower"
    print(
        f"\n{task.name}: {task.quality_name} ({better} is better), {args.ratio:.0%} of MACs "
        f"removed (achieved ratio {task.extra['macs_ratio']}), {task.extra}"
    )
    print(
        f"| variant | {task.quality_name} | ms b1 | ms b8 | vs dense fp32 (b1 / b8) | "
        "vs dense INT8 (b1 / b8) |\n|---|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['variant']} | {row['quality']:.4f} | {row['ms_b1']:.4f} | "
            f"{row['ms_b8']:.4f} | {row['vs_fp32_b1']:.2f}× / {row['vs_fp32_b8']:.2f}× | "
            f"{row['vs_int8_b1']:.2f}× / {row['vs_int8_b8']:.2f}× |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--ratio", type=float, default=0.5, help="share of MACs removed")
    parser.add_argument("--epochs", type=int, default=12, help="digits CNN training epochs")
    parser.add_argument("--lm-steps", type=int, default=400, help="language model steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument(
        "--no-search", dest="search", action="store_false", help="skip the sparsec.search rows"
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "ray", "sequential"),
        default="sequential",
        help="where the search compiles and scores candidates (Ray's idle daemons stay up "
        "while the table's variants are timed, so the published run is sequential)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_budget.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    before = machine()
    print(f"{machine_line(before)}; {args.threads} threads", flush=True)
    tables: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sparsec-quality-") as scratch:
        for name in args.models:
            print(f"{name}:", flush=True)
            task = TASKS[name](args)
            out = Path(scratch) / name
            quality = _variants(task, args, out)
            rows = _rows(task, quality, args, out)
            _print(task, rows, args)
            tables[name] = {
                "quality": task.quality_name,
                "higher_is_better": task.higher_is_better,
                "extra": task.extra,
                "rows": rows,
            }
    after = machine()
    print(f"\n{machine_line(after)}")
    write_results(args.out, before, after, tables=tables)


if __name__ == "__main__":
    main()
