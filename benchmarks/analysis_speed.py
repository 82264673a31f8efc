"""Dependency-analysis speed and memory: a ResNet-50-sized CNN and LLaMA-7B-shaped decoders.

Rules:
- two stages are timed separately: tracing (`sparsec.frontends.trace`, torch.export) and the
  `DependencyGroups` analysis on the traced graph;
- each case runs in its own subprocess, so its peak resident memory (VmHWM, reset before
  each stage where Linux allows it, else `ru_maxrss`) belongs to that case alone;
- ResNet-50 (bottlenecks [3, 4, 6, 3], 224x224, real CPU weights) is written here, no
  torchvision; the median of `--repeats` runs is reported;
- the LLaMA-7B shapes (hidden 4096, MLP 11008, 32 layers, 32 heads, vocab 32000; and a GQA
  variant with 8 key/value heads) are built under `torch.device("meta")`, inputs on meta
  too: the script asserts that every graph tensor is on meta and that the peak memory stays
  far below what the weights would take.

Run: `python benchmarks/analysis_speed.py [--repeats 5] [--llama-repeats 1]`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
# The meta-device analysis must stay far below the weights: allow at most this much growth
# of resident memory over the process's baseline (torch + transformers imported).
META_GROWTH_LIMIT = 2 * GIB


# ---------------------------------------------------------------- memory
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss() -> int:
    return _status("VmRSS")


def _peak() -> int:
    try:
        return _status("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------- models
def _resnet50() -> Any:
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            cout = mid * 4
            self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
            self.conv2, self.bn2 = (
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
                nn.BatchNorm2d(mid),
            )
            self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + identity)

    class ResNet50(nn.Module):
        def __init__(self, classes: int = 1000) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], 64
            for mid, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
                stage = []
                for i in range(blocks):
                    stage.append(Bottleneck(cin, mid, stride if i == 0 else 1))
                    cin = mid * 4
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    return ResNet50().eval(), (torch.randn(2, 3, 224, 224),)


def _llama7b(kv_heads: int) -> Any:
    import torch
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=kv_heads,
        num_hidden_layers=32,
        vocab_size=32000,
        use_cache=False,
        attn_implementation="sdpa",
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).eval()
    # Token ids on meta too: export only needs their shape and dtype.
    ids = torch.empty(2, 16, dtype=torch.long, device="meta")
    return model, {"input_ids": ids}


CASES = {
    "resnet50": ("ResNet-50, 224x224, CPU weights", _resnet50),
    "llama7b-meta": ("LLaMA-7B shape, 32 heads (MHA), meta", lambda: _llama7b(32)),
    "llama7b-gqa-meta": ("LLaMA-7B shape, 32 q / 8 kv heads (GQA), meta", lambda: _llama7b(8)),
}


# ---------------------------------------------------------------- one case, in a subprocess
def run_case(name: str, repeats: int) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    import torch
    import transformers  # noqa: F401 - imported before the baseline so it is not counted

    from sparsec.frontends import trace
    from sparsec.passes.analysis.dependency_groups import DependencyGroups
    from sparsec.pipeline import AnalysisManager

    torch.set_num_threads(1)
    baseline = _rss()
    peak_resettable = _reset_peak()
    model, inputs = CASES[name][1]()
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    devices = sorted({str(p.device) for p in model.parameters()})
    after_build = _peak()

    trace_s, analysis_s, trace_peak, analysis_peak = [], [], [], []
    for _ in range(repeats):
        _reset_peak()
        start = time.perf_counter()
        graph = trace(model, inputs)
        trace_s.append(time.perf_counter() - start)
        trace_peak.append(_peak())
        _reset_peak()
        start = time.perf_counter()
        info = DependencyGroups().run(graph, AnalysisManager(graph))
        analysis_s.append(time.perf_counter() - start)
        analysis_peak.append(_peak())

    graph_devices = sorted(
        {str(t.device) for t in [*graph.module.parameters(), *graph.module.buffers()]}
    )
    frozen = [g for g in info.groups if len(g.frozen_units) == len(g.units)]
    result = {
        "case": name,
        "description": CASES[name][0],
        "repeats": repeats,
        "parameters": params,
        "weight_bytes": weight_bytes,
        "weight_devices": devices,
        "graph_tensor_devices": graph_devices,
        "nodes": graph.num_nodes(),
        "slots": len(info.slot_units),
        "groups": len(info.groups),
        "fully_frozen_groups": len(frozen),
        "unruled_ops": sorted(info.unruled_ops),
        "trace_s": trace_s,
        "analysis_s": analysis_s,
        "trace_median_s": statistics.median(trace_s),
        "analysis_median_s": statistics.median(analysis_s),
        "rss_baseline_bytes": baseline,
        "peak_after_build_bytes": after_build,
        "peak_trace_bytes": max(trace_peak),
        "peak_analysis_bytes": max(analysis_peak),
        "peak_process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_resettable": peak_resettable,
    }
    if "meta" in name:
        growth = result["peak_process_bytes"] - baseline
        result["peak_growth_bytes"] = growth
        assert graph_devices == ["meta"], f"graph tensors left the meta device: {graph_devices}"
        assert growth < META_GROWTH_LIMIT, (
            f"meta-device analysis grew resident memory by {growth / GIB:.2f} GiB "
            f"(weights would take {weight_bytes / GIB:.1f} GiB)"
        )
        assert growth < weight_bytes / 10
    return result


# ---------------------------------------------------------------- driver
def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | params | weights (GiB, if allocated) | nodes | groups | trace s (median) | "
        "analysis s (median) | runs | baseline RSS GiB | peak RSS GiB (trace / analysis / process) | growth GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} ||||||||||")
            continue
        lines.append(
            f"| {r['description']} | {r['parameters'] / 1e6:,.1f}M | {_gib(r['weight_bytes'])} | {r['nodes']} | "
            f"{r['groups']} | {r['trace_median_s']:.2f} | {r['analysis_median_s']:.2f} | {r['repeats']} | "
            f"{_gib(r['rss_baseline_bytes'])} | {_gib(r['peak_trace_bytes'])} / {_gib(r['peak_analysis_bytes'])} / "
            f"{_gib(r['peak_process_bytes'])} | {_gib(r['peak_process_bytes'] - r['rss_baseline_bytes'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of the ResNet-50 case")
    parser.add_argument("--llama-repeats", type=int, default=1, help="runs of each LLaMA-7B case")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "analysis_speed.json"
    )
    args = parser.parse_args()
    if args.case:
        repeats = args.repeats if args.case == "resnet50" else args.llama_repeats
        print("RESULT " + json.dumps(run_case(args.case, repeats)))
        return

    load_before = os.getloadavg()
    rows = []
    for name in args.cases:
        cmd = [
            sys.executable,
            __file__,
            "--case",
            name,
            "--repeats",
            str(args.repeats),
            "--llama-repeats",
            str(args.llama_repeats),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            rows.append({"case": name, "error": err[-1] if err else f"exit {proc.returncode}"})
            print(proc.stderr[-3000:], file=sys.stderr)
        else:
            rows.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    import torch

    header = (
        f"Dependency analysis speed (torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"1 torch thread; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after: timings are noisy "
        "on a shared machine). Each case in its own process; peak RSS is VmHWM reset per stage."
    )
    print(header + "\n\n" + table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "meta_growth_limit_bytes": META_GROWTH_LIMIT,
    }
    args.out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
