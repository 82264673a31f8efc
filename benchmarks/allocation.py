"""Achieved vs requested pruning ratio on the model zoo, for each target kind.

`prune-channels{ratio=R,target=K,allocation=A}` for K in channels/params/MACs and both
allocations; prints requested, estimated (the pass's cost model before rewriting) and
achieved (measured on the pruned graph) ratios, and the pass's note where it misses by
more than 2%. Writes benchmarks/results/allocation.json.

Run: `python benchmarks/allocation.py [--ratio 0.5]`
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from zoo import ZOO  # noqa: E402

import sparsec  # noqa: E402


def _target_summary(compiled: sparsec.CompiledModel) -> dict:
    for name, summary in compiled.report.pass_summaries:
        if name.startswith("prune-channels") and "target" in summary:
            return summary["target"]
    raise RuntimeError("prune-channels reported no target summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/allocation.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for name, entry in ZOO.items():
        for kind in ("channels", "params", "macs"):
            for allocation in ("local", "global"):
                model, inputs = entry.build()
                text = f"magnitude-importance,prune-channels{{ratio={args.ratio},target={kind},allocation={allocation}}}"
                try:
                    compiled = sparsec.compile(model, inputs, pipeline=text, backend="torch")
                except Exception as exc:  # a failure is a result to report
                    rows.append(
                        {
                            "model": name,
                            "target": kind,
                            "allocation": allocation,
                            "error": str(exc).splitlines()[0],
                        }
                    )
                    continue
                t = _target_summary(compiled)
                rows.append(
                    {
                        "model": name,
                        "target": kind,
                        "allocation": allocation,
                        "requested": t["requested"],
                        "estimated": t["estimated"],
                        "achieved": t["achieved"],
                        "within_2pct": t["within_tolerance"],
                        "note": t.get("note", ""),
                    }
                )
                print(
                    f"{name:18s} {kind:8s} {allocation:6s} requested {t['requested']:.3f} "
                    f"achieved {t['achieved']:.3f} {'ok' if t['within_tolerance'] else 'MISS: ' + t.get('note', '')}",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"ratio": args.ratio, "rows": rows}, indent=2))
    within = sum(r.get("within_2pct", False) for r in rows)
    print(f"{within}/{len(rows)} within 2% of the target; wrote {args.out}")


if __name__ == "__main__":
    main()
