"""The demo: compile a small CNN and a small transformer, print reports, write artifacts.

Run with `make demo` (sets up .venv first) or `python examples/demo.py --out artifacts`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sparsec  # noqa: E402
from examples.models import small_cnn, small_transformer  # noqa: E402


def _compile_and_ship(name: str, model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    print(f"\n=== {name} ===", flush=True)
    compiled = sparsec.compile(
        model, (example,), target="cpu", pipeline="structured-50",
        progress=lambda message: print(f"  .. {message}", flush=True),
    )
    print(compiled.report.to_markdown())
    path = compiled.save(out / name)
    loaded = sparsec.load(path)
    batch = torch.cat([example, example, example])  # a batch size the model was not traced with
    error = (loaded(batch) - compiled.module(batch)).abs().max().item()
    print(f"artifact: {path} (reloaded, batch {batch.shape[0]}: max |artifact - torch| = {error:.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    args = parser.parse_args()
    torch.manual_seed(0)
    _compile_and_ship("small_cnn", small_cnn(), torch.randn(2, 3, 32, 32), args.out)
    _compile_and_ship("small_transformer", small_transformer(), torch.randint(0, 1000, (2, 16)), args.out)


if __name__ == "__main__":
    main()
