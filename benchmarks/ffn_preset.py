"""The README's preset path on one BERT-base FFN: does `block-90` on TVM beat dense ORT here?

Rules:
- the model is 768 → 3072 → GELU → 768 (random weights, seed 0), 1024 tokens;
- variants: `ort-dense` (`pipeline="none"`, onnxruntime), `block-90-tvm` (the preset with
  `backend="tvm"`), `block-90-default` (the preset, backend chosen by sparsec) and
  `explicit-tvm` (`sparsify{pattern=block,sparsity=0.9,block=[16,1]},
  lower-sparse-weights{format=bsr,gate=off}` on tvm);
- each variant is compiled and timed in its own fresh process (`_isolation`), `--threads`
  everywhere; 3 warm-up calls, then the median of `--repeats`; the gate's decisions of the
  preset variants are printed with their timings; writes benchmarks/results/ffn_preset.json.

Example:
    taskset -c 0,1 python benchmarks/ffn_preset.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

import sparsec

sys.path.insert(0, str(Path(__file__).parent))
from _isolation import emit, in_fresh_process, machine, machine_line, median_ms, write_results  # noqa: E402

TOKENS = 1024
EXPLICIT = (
    "sparsify{pattern=block,sparsity=0.9,block=[16,1]},lower-sparse-weights{format=bsr,gate=off}"
)
VARIANTS = {
    "ort-dense": {"pipeline": "none", "backend": "onnxruntime"},
    "block-90-tvm": {"pipeline": "block-90", "backend": "tvm"},
    "block-90-default": {"pipeline": "block-90"},
    "explicit-tvm": {"pipeline": EXPLICIT, "backend": "tvm"},
}


class Ffn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = torch.nn.Linear(768, 3072), torch.nn.Linear(3072, 768)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _child(variant: str, threads: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    x = torch.randn(TOKENS, 768)
    compiled = sparsec.compile(Ffn().eval(), (x,), threads=threads, **VARIANTS[variant])
    gate = [
        f"{row['layer']}: {row['format']} ({row['reason']})"
        for name, summary in compiled.report.pass_summaries
        if name.startswith("lower-sparse-weights")
        for row in summary["layers"]
    ]
    return {
        "variant": variant,
        "ms": round(median_ms(lambda: compiled(x), repeats), 2),
        "backend": compiled.report.backend,
        "gate": gate,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ffn_preset.json"))
    args = parser.parse_args()
    if args.child:
        emit(_child(args.child, args.threads, args.repeats))
        return
    before = machine()
    print(f"{machine_line(before)}; FFN 768-3072-768, {TOKENS} tokens, {args.threads} threads")
    results = [
        in_fresh_process(
            Path(__file__), [v, "--threads", str(args.threads), "--repeats", str(args.repeats)]
        )
        for v in VARIANTS
    ]
    dense = results[0]["ms"]
    for result in results:
        print(
            f"{result['variant']:>17} on {result['backend']:<11} {result['ms']:8.2f} ms "
            f"{dense / result['ms']:5.2f}x vs ort-dense"
        )
        for line in result["gate"]:
            print(f"{'':>20}{line}")
    write_results(args.out, before, machine(), results=results)


if __name__ == "__main__":
    main()
