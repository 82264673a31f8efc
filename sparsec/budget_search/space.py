"""What the search tries: candidates as pipeline text, backend, backend options and recovery.

Rules:
- a `Candidate` is plain data (its `name` is its key in the results file, so a resumed search
  skips what it has measured): `pipeline` compiles it without recovery; with `recover`,
  `train_pipeline` (no lowering to sparse ops, so the user's module tree trains) runs
  first, and `relower` compiles the recovered module (re-sparsifying by magnitude picks the
  same zeros; structured widths are already final, so it is "none");
- `default_space(...)` covers the dense model (fp32 and INT8: the simplest alternative),
  structured pruning of `ratios` of the MACs (L2 magnitude, widths rounded to 8) with and
  without INT8 on ONNX Runtime, and, when the TVM backend is installed and the target is
  "cpu", block-sparse linears (16×1 blocks) at `sparsities` on TVM's kernels;
- INT8 is static (QDQ, calibrated) for models fed with floating-point inputs (CNNs, ViTs),
  and dynamic for models fed with token ids: ORT recommends dynamic quantization for
  transformer linears, whose activation ranges vary per input;
- `recover=True` marks pruned candidates for distillation before they are measured.

Example:
    space = default_space(ratios=(0.25, 0.5), sparsities=(0.9,), target="cpu", recover=True)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Candidate", "default_space"]


@dataclass(frozen=True)
class Candidate:
    """One point of the search: how to compile the model, and whether to recover it."""

    name: str
    pipeline: str
    backend: str = "onnxruntime"
    backend_options: dict[str, Any] = field(default_factory=dict)
    recover: bool = False
    train_pipeline: str = ""
    relower: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _structured(ratio: float) -> str:
    return f"magnitude-importance{{norm=2}},prune-channels{{ratio={ratio},target=macs,round_to=8}}"


def _blocks(sparsity: float) -> str:
    return f"sparsify{{pattern=block,block=[16,1],sparsity={sparsity}}}"


def default_space(
    *,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    sparsities: Sequence[float] = (0.7, 0.9),
    target: str = "cpu",
    recover: bool = False,
    static_int8: bool = True,  # False: dynamic INT8 (see module rules)
) -> list[Candidate]:
    """The candidates of a search on `target` (see module rules)."""
    int8 = {"quantize": "static" if static_int8 else "dynamic"}
    space = [
        Candidate("dense", "none"),
        Candidate("dense+int8", "none", backend_options=int8),
    ]
    for ratio in ratios:
        name = f"structured-{ratio:g}" + ("+recover" if recover else "")
        pruned = _structured(ratio)
        space.append(Candidate(name, pruned, recover=recover, train_pipeline=pruned))
        space.append(
            Candidate(f"{name}+int8", pruned, "onnxruntime", int8, recover, train_pipeline=pruned)
        )
    if target == "cpu" and importlib.util.find_spec("tvm") is not None:
        for sparsity in sparsities:
            name = f"block16x1-{sparsity:g}" + ("+recover" if recover else "")
            lowered = f"{_blocks(sparsity)},lower-sparse-weights{{format=bsr}}"
            space.append(
                Candidate(name, lowered, "tvm", {}, recover, _blocks(sparsity), relower=lowered)
            )
    return space
