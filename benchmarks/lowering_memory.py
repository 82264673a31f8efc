"""Resident memory after compiling: the backend's lowered copy sharing the weights, or not.

Why: a backend lowers a copy of the graph (the artifact keeps the unlowered program). A deep
copy held every weight twice; `Graph.copy` now shares the tensors unless the copy moves to
another device. The "deep copy" row is a control: the same compile with `Graph.copy`
replaced by a plain deep copy, as it was before.

Rules:
- each variant runs in its own fresh process (`_isolation.in_fresh_process`), so one's
  freed memory cannot hide the other's;
- the figure is the process's resident set after compile, one call and a garbage
  collection, and its peak (ru_maxrss).

Run: python benchmarks/lowering_memory.py --layers 4
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import resource
from pathlib import Path
from typing import Any

from _isolation import emit, in_fresh_process, machine, machine_line, write_results

HERE = Path(__file__).resolve()
VARIANTS = ("shared", "deep copy")


def _resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _child(variant: str, layers: int, pipeline: str, backend: str) -> dict[str, Any]:
    import torch
    from transformers import BertConfig, BertModel

    import sparsec
    from sparsec.ir import Graph

    if variant == "deep copy":

        def deep(self: Graph, device: torch.device | None = None) -> Graph:
            twin = dataclasses.replace(self, module=copy.deepcopy(self.module))
            if device is not None:
                twin.module.to(device)
                twin.propagate_shapes(device)
            return twin

        Graph.copy = deep  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=layers)).eval()
    ids = torch.randint(0, 1000, (1, 128))
    compiled = sparsec.compile(model, (ids,), pipeline=pipeline, backend=backend)
    with torch.no_grad():
        compiled(ids)
    del model
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "resident_mb": round(_resident_mb(), 1), "peak_mb": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="BERT-base encoder layers")
    parser.add_argument("--pipeline", default="block-90")
    parser.add_argument("--backend", default="tvm")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results/lowering_memory.json")
    parser.add_argument("--child", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        emit(_child(args.child[0], args.layers, args.pipeline, args.backend))
        return
    before = machine()
    print(machine_line(before))
    options = ["--layers", str(args.layers), "--pipeline", args.pipeline, "--backend", args.backend]
    rows = [in_fresh_process(HERE, [variant, *options]) for variant in VARIANTS]
    print(f"BERT-base, {args.layers} layers, pipeline={args.pipeline}, backend={args.backend}")
    print(f"{'copy':<10} {'resident MB':>12} {'peak MB':>9}")
    for row in rows:
        print(f"{row['variant']:<10} {row['resident_mb']:>12.1f} {row['peak_mb']:>9.1f}")
    write_results(
        args.out, before, machine(), layers=args.layers, pipeline=args.pipeline,
        backend=args.backend, rows=rows,
    )


if __name__ == "__main__":
    main()
