"""Compile time, phase by phase, against Torch-Pruning: ResNet-50, BERT-base, a LLaMA-shaped model.

Rules:
- each row runs in a fresh process (`_isolation.in_fresh_process`), so every tool pays its
  own first-call costs (torch.export's and the ONNX exporter's warm-up) and nothing else;
- torch runs on `--threads` threads (default 1, as the issue's measurement);
- sparsec: `sparsec.compile(model, inputs, pipeline="structured-50", backend=...)` with the
  torch backend and with ONNX Runtime; the phases are the report's `phase_times` (trace,
  passes, materialize, lower, numeric check) and each pass's time;
- the peer: Torch-Pruning's `MagnitudePruner` (L2, ratio 0.5, the classifier ignored), and
  the same followed by `torch.onnx.export(..., dynamo=True)` of its result with a dynamic
  batch: what a user of the peer runs to get an ONNX file;
- the median of `--repeats` fresh processes is reported; the load average is printed.

Run: `python benchmarks/compile_speed.py [--repeats 3] [--threads 1] [--models resnet50,bert,llama]`
Writes `benchmarks/results/compile_speed.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _isolation import emit, in_fresh_process, machine, machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("sparsec-torch", "sparsec-onnxruntime", "torch-pruning", "torch-pruning+onnx")


# ---------------------------------------------------------------- models
def _resnet50() -> tuple[Any, Any]:
    from analysis_speed import _resnet50 as build

    model, (x,) = build()
    return model, (x[:1],)


def _bert() -> tuple[Any, Any]:
    import torch
    import transformers

    config = transformers.BertConfig(attn_implementation="sdpa")  # BERT-base: 12 x 768, 12 heads
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.config.return_dict = False
    return model, {"input_ids": torch.randint(0, config.vocab_size, (1, 128))}


def _llama() -> tuple[Any, Any]:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_attention_heads=16,
        num_key_value_heads=4,
        num_hidden_layers=8,
        vocab_size=32000,
        use_cache=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    return model, {"input_ids": torch.randint(0, config.vocab_size, (1, 128))}


MODELS = {
    "resnet50": ("ResNet-50, 1x3x224x224", _resnet50),
    "bert": ("BERT-base, 1x128 tokens", _bert),
    "llama": ("LLaMA-shaped, 8 x 1024, GQA 16/4, 1x128 tokens", _llama),
}


# ---------------------------------------------------------------- one run, in a child
def _ignored(model: Any) -> list[Any]:
    """Layers Torch-Pruning must keep whole: the classifier / LM head and the embeddings."""
    import torch

    keep = [m for name, m in model.named_modules() if name.split(".")[-1] in ("fc", "lm_head")]
    keep += [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return keep


def _peer(model: Any, inputs: Any, with_onnx: bool) -> dict[str, Any]:
    import torch
    import torch_pruning as tp

    start = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model,
        inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=_ignored(model),
    )
    pruner.step()
    phases = {"prune": time.perf_counter() - start}
    if with_onnx:
        start = time.perf_counter()
        args, kwargs = ((), inputs) if isinstance(inputs, dict) else (inputs, {})
        batch = torch.export.Dim("batch", min=1, max=1024)
        leaves = list(kwargs) if kwargs else range(len(args))
        dynamic = {k: {0: batch} for k in leaves} if kwargs else tuple({0: batch} for _ in leaves)
        torch.onnx.export(
            model, args, kwargs=kwargs, dynamic_shapes=dynamic, dynamo=True, verbose=False
        ).save("/tmp/sparsec-compile-speed-peer.onnx")
        phases["onnx export"] = time.perf_counter() - start
    return {"total": sum(phases.values()), "phases": phases, "passes": {}}


def _sparsec(model: Any, inputs: Any, backend: str) -> dict[str, Any]:
    import sparsec

    start = time.perf_counter()
    compiled = sparsec.compile(model, inputs, pipeline="structured-50", backend=backend)
    total = time.perf_counter() - start
    report = compiled.report
    return {
        "total": total,
        "phases": dict(report.phase_times),
        "passes": dict(report.pass_times),
    }


def child(model_name: str, tool: str, threads: int) -> None:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)
    model, inputs = MODELS[model_name][1]()
    if tool.startswith("sparsec"):
        result = _sparsec(model, inputs, tool.removeprefix("sparsec-"))
    else:
        result = _peer(model, inputs, with_onnx=tool.endswith("+onnx"))
    emit(result)


# ---------------------------------------------------------------- the table
def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["total"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "TOOL", "THREADS"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compile_speed.json")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    info = machine()
    print(f"Compile time, structured-50 (median of {args.repeats} fresh processes, {args.threads} thread(s))")
    print(machine_line(info))
    rows = []
    for model_name in args.models.split(","):
        for tool in TOOLS:
            runs = []
            for _ in range(args.repeats):
                try:
                    runs.append(in_fresh_process(Path(__file__), [model_name, tool, str(args.threads)]))
                except RuntimeError as exc:
                    runs.append({"error": str(exc).splitlines()[-1][:200]})
                    break
            ok = [r for r in runs if "error" not in r]
            row: dict[str, Any] = {"model": model_name, "tool": tool}
            if ok:
                median = _median_run(ok)
                row.update(
                    total_s=statistics.median(r["total"] for r in ok),
                    runs_s=[round(r["total"], 3) for r in ok],
                    phases_s=median["phases"],
                    passes_s=median["passes"],
                )
            else:
                row["error"] = runs[-1]["error"]
            rows.append(row)
            phases = ", ".join(f"{k} {v:.2f}" for k, v in row.get("phases_s", {}).items())
            total = f"{row['total_s']:7.2f} s" if "total_s" in row else "  failed"
            print(f"{MODELS[model_name][0]:48s} {tool:22s} {total}  ({phases or row.get('error')})")
    info_after = machine()
    print(f"load after: {info_after['load']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": info, "load_after": info_after["load"], "threads": args.threads, "repeats": args.repeats, "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
