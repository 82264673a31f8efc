"""Coverage of structural pruning over the model zoo (tests/zoo.py), beside the peer tool.

Rules:
- every zoo model is compiled with `pipeline="structured-50"`, `backend="onnxruntime"`; a
  failure is a result: its first line is recorded (if only the ONNX lowering fails, the model
  is compiled again with the torch backend so the pruning columns are still measured);
- "pruned OK": the pruned torch graph runs at batch 3 (traced at 2) with every output shape
  unchanged apart from the batch, and finite outputs;
- "ONNX OK": ONNX Runtime's outputs match the pruned torch module (torch's fused attention
  fast path off) on the example inputs within
  atol = 1e-4 * max(1, max |torch output|);
- "heads pruned": every group holding an attention producer of the zoo entry is unfrozen and
  shrank (n.a. for models without attention);
- the peer, Torch-Pruning, prunes a fresh copy with `MagnitudePruner` (group L2 magnitude,
  ratio 0.5, the final layer ignored; for transformers with separate q/k/v projections,
  `num_heads` as its LLM example does) and the pruned model is run as is, with no hand edits.

Run: `python benchmarks/coverage.py [--only bert llama-gqa]` (writes benchmarks/results/coverage.{json,md})
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _zoo import first_line, load_zoo  # noqa: E402

import sparsec  # noqa: E402
from sparsec.frontends.trace_settings import no_attention_fastpath  # noqa: E402

RATIO = 0.5


def _call(module: Any, inputs: Any) -> Any:
    with torch.no_grad():
        return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _with_batch(inputs: Any, batch: int) -> Any:
    def grow(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        reps = -(-batch // t.shape[0])
        return torch.cat([t] * reps)[:batch]

    return pytree.tree_map(grow, inputs)


def _shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _tensors(out)]


def _rebatched(shapes: list[tuple[int, ...]], batch: int) -> list[tuple[int, ...]]:
    return [(batch, *s[1:]) for s in shapes]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_runs(module: Any, inputs: Any, expected: list[tuple[int, ...]], batch: int) -> str:
    """'' if `module` runs on `inputs` at `batch` with the expected shapes, else why not."""
    try:
        out = _tensors(_call(module, _with_batch(inputs, batch)))
    except Exception as exc:  # a failing model is the result being measured
        return first_line(exc)
    got = [tuple(t.shape) for t in out]
    want = _rebatched(expected, batch)
    if got != want:
        return f"output shapes {got} != {want}"
    if not all(torch.isfinite(t).all() for t in out if t.is_floating_point()):
        return "non-finite outputs"
    return ""


def _onnx_matches(compiled: Any, inputs: Any) -> tuple[bool, str, float]:
    # torch's fused attention fast path (nested tensors under a padding mask) leaves padded
    # positions at zero where torch's own forward, and the traced graph, compute them
    with no_attention_fastpath():
        expected = _tensors(_call(compiled.module, inputs))
    try:
        got = _tensors(_call(compiled, inputs))
    except Exception as exc:
        return False, first_line(exc), float("nan")
    if len(got) != len(expected):
        return False, f"{len(got)} outputs, torch has {len(expected)}", float("nan")
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        if g.shape != e.shape:
            return False, f"shape {tuple(g.shape)} != {tuple(e.shape)}", float("nan")
        scale = max(float(e.abs().max()), 1.0)
        err = float((g.float() - e.float()).abs().max()) / scale
        worst = max(worst, err)
    return worst <= 1e-4, "" if worst <= 1e-4 else f"max error {worst:.2e} x scale", worst


def _heads(entry: Any, groups: list[dict[str, Any]]) -> tuple[str, str]:
    if not entry.attention:
        return "n.a.", ""
    for pattern in entry.attention:
        rows = [
            g
            for g in groups
            if any(fnmatch.fnmatch(layer.strip(), pattern) for layer in g["layers"].split(","))
        ]
        if not rows:
            return "no", f"no group holds {pattern}"
        for g in rows:
            if g["frozen"]:
                return "no", f"{g['layers']}: {g['frozen']}"
            if g["after"] >= g["before"]:
                return "no", f"{g['layers']} not pruned"
    return "yes", ""


def _sparsec(entry: Any) -> dict[str, Any]:
    model, inputs = entry.build()
    reference = _shapes(_call(model, inputs))
    row: dict[str, Any] = {"model": entry.name, "compile_error": "", "onnx_error": ""}
    start = time.perf_counter()
    compiled = None
    try:
        compiled = sparsec.compile(model, inputs, pipeline="structured-50", backend="onnxruntime")
    except Exception as exc:
        row["compile_error"] = first_line(exc)
        try:  # is it only the ONNX lowering? measure the pruning with the torch backend
            model, inputs = entry.build()
            compiled = sparsec.compile(model, inputs, pipeline="structured-50", backend="torch")
            row["onnx_error"], row["compile_error"] = row["compile_error"], ""
        except Exception:
            compiled = None
    row["compile_s"] = time.perf_counter() - start
    if compiled is None:
        row.update(pruned_ok=False, onnx_ok=False, heads="no", frozen_groups=None)
        return row
    report = compiled.report
    row.update(
        params_before=report.before.parameters,
        params_after=report.after.parameters,
        macs_before=report.before.macs,
        macs_after=report.after.macs,
    )
    errors = [e for b in (2, 3) if (e := _check_runs(compiled.module, inputs, reference, b))]
    row["pruned_ok"] = not errors and report.after.parameters < report.before.parameters
    row["pruned_error"] = (
        errors[0] if errors else ("" if row["pruned_ok"] else "no parameters removed")
    )
    if row["onnx_error"]:
        row["onnx_ok"], row["onnx_rel_error"] = False, None
    else:
        ok, why, err = _onnx_matches(compiled, inputs)
        row["onnx_ok"], row["onnx_error"], row["onnx_rel_error"] = ok, why, err
        row["onnx_batch3_error"] = _check_runs(compiled, inputs, reference, 3)
    row["heads"], row["heads_reason"] = _heads(entry, report.groups)
    frozen = [g for g in report.groups if g["frozen"]]
    row["groups"] = len(report.groups)
    row["frozen_groups"] = len(frozen)
    row["first_frozen"] = ""
    if frozen:
        layers = [x.strip() for x in frozen[0]["layers"].split(",")]
        more = f" +{len(layers) - 1}" if len(layers) > 1 else ""
        row["first_frozen"] = f"{frozen[0]['frozen']} [{layers[0]}{more}]"
    return row


def _head_module(model: torch.nn.Module) -> torch.nn.Module:
    """The final layer: the last leaf module that holds parameters (classifier, lm_head, out)."""
    leaves = [
        m for m in model.modules() if not list(m.children()) and list(m.parameters(recurse=False))
    ]
    return leaves[-1]


_QKV = (
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
    ("q_lin", "k_lin", "v_lin"),
    ("q", "k", "v"),
)


def _num_heads(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """Torch-Pruning's `num_heads` for separate q/k/v Linear projections, from the HF config."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if heads is None:
        return {}
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    found: dict[torch.nn.Module, int] = {}
    for module in model.modules():
        for names in _QKV:
            projections = [getattr(module, n, None) for n in names]
            if all(isinstance(p, torch.nn.Linear) for p in projections):
                found[projections[0]] = heads
                found[projections[1]] = kv_heads
                found[projections[2]] = kv_heads
                break
    return found


def _peer(entry: Any) -> dict[str, Any]:
    try:
        import torch_pruning as tp
    except ImportError:
        return {"peer_ok": None, "peer_error": "torch-pruning not installed"}
    model, inputs = entry.build()
    reference = _shapes(_call(model, inputs))
    before = _params(model)
    heads = _num_heads(model)
    options: dict[str, Any] = {}
    if heads:
        options = {
            "num_heads": heads,
            "prune_num_heads": True,
            "prune_head_dims": False,
            "head_pruning_ratio": RATIO,
        }
    row: dict[str, Any] = {"peer_num_heads": bool(heads)}
    start = time.perf_counter()
    try:
        pruner = tp.pruner.MagnitudePruner(
            model,
            inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=RATIO,
            ignored_layers=[_head_module(model)],
            **options,
        )
        pruner.step()
    except Exception as exc:
        row.update(
            peer_ok=False,
            peer_error="pruning: " + first_line(exc),
            peer_s=time.perf_counter() - start,
        )
        return row
    row["peer_s"] = time.perf_counter() - start
    row["peer_params_after"] = _params(model)
    model.eval()
    errors = [e for b in (2, 3) if (e := _check_runs(model, inputs, reference, b))]
    row["peer_ok"] = not errors and row["peer_params_after"] < before
    row["peer_error"] = errors[0] if errors else ("" if row["peer_ok"] else "no parameters removed")
    return row


def _yes(flag: bool | None) -> str:
    return "n.a." if flag is None else ("yes" if flag else "no")


def _cell(text: str, limit: int = 90) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | params before → after | MACs before → after | pruned OK | ONNX OK | heads pruned "
        "| frozen groups (first reason) | Torch-Pruning runs, same shape |",
        "|---|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("compile_error"):
            lines.append(
                f"| {r['model']} | - | - | no: {_cell(r['compile_error'])} | - | - | - | "
                f"{_peer_cell(r)} |"
            )
            continue
        pruned = "yes" if r["pruned_ok"] else f"no: {_cell(r['pruned_error'])}"
        onnx = "yes" if r["onnx_ok"] else f"no: {_cell(r['onnx_error'])}"
        heads = r["heads"] if r["heads"] != "no" else f"no: {_cell(r['heads_reason'])}"
        frozen = str(r["frozen_groups"]) + (
            f" ({_cell(r['first_frozen'])})" if r["first_frozen"] else ""
        )
        lines.append(
            f"| {r['model']} | {_fmt(r['params_before'])} → {_fmt(r['params_after'])} "
            f"({r['params_after'] / r['params_before']:.2f}) | {_fmt(r['macs_before'])} → {_fmt(r['macs_after'])} "
            f"({r['macs_after'] / max(r['macs_before'], 1):.2f}) | {pruned} | {onnx} | {heads} | {frozen} | {_peer_cell(r)} |"
        )
    return "\n".join(lines)


def _peer_cell(r: dict[str, Any]) -> str:
    if r.get("peer_ok") is None:
        return f"n.a.: {r.get('peer_error', '')}"
    heads = " (num_heads)" if r.get("peer_num_heads") else ""
    after = r.get("peer_params_after")
    size = (
        f", {_fmt(after)} params ({after / r['params_before']:.2f})"
        if after and r.get("params_before")
        else ""
    )
    return ("yes" + heads + size) if r["peer_ok"] else f"no{heads}{size}: {_cell(r['peer_error'])}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=None, help="zoo entries to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    zoo = load_zoo()
    start = time.perf_counter()
    rows = []
    for name, entry in zoo.ZOO.items():
        if args.only and name not in args.only:
            continue
        if entry.needs and not zoo.hf_available(entry.needs):
            rows.append(
                {"model": name, "compile_error": f"transformers.{entry.needs} not available"}
            )
            continue
        noise = io.StringIO()  # exporters print progress; keep the table readable
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            row = _sparsec(entry)
            row.update(_peer(entry))
        rows.append(row)
        print(
            f"{name}: sparsec {row['compile_s']:.1f}s, pruned_ok={row.get('pruned_ok')}, "
            f"onnx_ok={row.get('onnx_ok')}, peer_ok={row.get('peer_ok')}",
            file=sys.stderr,
            flush=True,
        )
    total = time.perf_counter() - start
    table = markdown(rows)
    load = os.getloadavg()
    header = (
        f"Zoo coverage, `structured-50` (sparsec {getattr(sparsec, '__version__', '?')}, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, "
        f"total {total:.0f} s). Pruned at batch 2, checked at batches 2 and 3; ONNX compared on the example "
        "inputs; Torch-Pruning run as is (no hand edits of head counts)."
    )
    print(header + "\n\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.md").write_text(header + "\n\n" + table + "\n")
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg": load,
        "total_s": total,
        "ratio": RATIO,
        "pipeline": "structured-50",
    }
    with contextlib.suppress(Exception):
        import torch_pruning

        meta["torch_pruning"] = torch_pruning.__version__
    (args.out / "coverage.json").write_text(
        json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n"
    )


if __name__ == "__main__":
    main()
