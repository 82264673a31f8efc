"""Recovery by fine-tuning after structured pruning: training mode against training as traced.

A residual CNN with BatchNorm and dropout is trained on scikit-learn's digits, 50% of the
channels of each prunable group are removed by L2 magnitude, and the pruned model is
fine-tuned for the same epochs three ways, from the same pruned weights and seed:
- sparsec, `compiled.module` in training mode (BatchNorm batch statistics, dropout on);
- sparsec, the traced graph module as traced (eval mode: the only option before);
- Torch-Pruning's MagnitudePruner with the same ratio, fine-tuned the same way (if installed:
  `pip install torch-pruning`, as `make bench` does).

Usage: python benchmarks/finetune_recovery.py [--epochs 2] [--seed 0]
Writes benchmarks/results/finetune_recovery.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsec  # noqa: E402
from sparsec.schedules import finetune  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "finetune_recovery.json"


class ResidualCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
        )
        self.down = nn.Sequential(
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU()
        )
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(self.body(h) + h)
        return self.fc(self.drop(self.down(h).mean((2, 3))))


def _data(seed: int) -> tuple[Any, Any]:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return (xtr, ytr), (xte, yte)


def _batches(data: tuple[torch.Tensor, torch.Tensor], seed: int, size: int = 32) -> list[Any]:
    x, y = data
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(x), size)]


def _accuracy(module: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float((module(data[0]).argmax(1) == data[1]).float().mean())


def _tune(module: nn.Module, train: Any, epochs: int, seed: int, training: bool) -> None:
    torch.manual_seed(seed)
    for epoch in range(epochs):
        finetune(
            module,
            _batches(train, seed + epoch),
            lambda out, b: F.cross_entropy(out, b[1]),
            lr=1e-3,
            inputs=lambda b: b[0],
            training=training,
        )


def _eval(module: nn.Module) -> nn.Module:
    try:
        return module.eval()
    except NotImplementedError:  # the traced graph module runs as traced (already eval)
        return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = _data(args.seed)
    torch.manual_seed(args.seed)
    model = ResidualCnn()
    _tune(model, train, 10, args.seed, training=True)
    model.eval()
    rows: list[dict[str, Any]] = [
        {
            "variant": "dense",
            "params": sum(p.numel() for p in model.parameters()),
            "pruned": _accuracy(model, test),
            "finetuned": None,
        }
    ]
    example = train[0][:8]

    compiled = sparsec.compile(model, (example,), backend="torch", pipeline="structured-50")
    params = sum(p.numel() for p in compiled.module.parameters())
    pruned_accuracy = _accuracy(_eval(copy.deepcopy(compiled.module)), test)
    for variant, module, training in (
        ("sparsec, compiled.module in training mode", copy.deepcopy(compiled.module), True),
        (
            "sparsec, graph module as traced (eval mode)",
            copy.deepcopy(compiled.graph.module),
            False,
        ),
    ):
        _tune(module, train, args.epochs, args.seed, training)
        rows.append(
            {
                "variant": variant,
                "params": params,
                "pruned": pruned_accuracy,
                "finetuned": _accuracy(_eval(module), test),
            }
        )
    try:
        import torch_pruning as tp

        peer = copy.deepcopy(model)
        tp.pruner.MagnitudePruner(
            peer,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=[peer.fc],
        ).step()
        peer.eval()
        before = _accuracy(peer, test)
        _tune(peer, train, args.epochs, args.seed, training=True)
        rows.append(
            {
                "variant": "Torch-Pruning, training mode",
                "params": sum(p.numel() for p in peer.parameters()),
                "pruned": before,
                "finetuned": _accuracy(peer.eval(), test),
            }
        )
    except ImportError:
        rows.append(
            {
                "variant": "Torch-Pruning",
                "params": None,
                "pruned": None,
                "finetuned": None,
                "note": "not installed (pip install torch-pruning)",
            }
        )

    print(
        f"machine: {platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}, "
        f"1 thread, {args.epochs} fine-tuning epochs, digits test split of {len(test[0])}"
    )
    print("| variant | params | accuracy after pruning | after fine-tuning |")
    print("|---|---:|---:|---:|")
    for row in rows:

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{100 * v:.1f}%"

        print(
            f"| {row['variant']} | {row['params'] or '-'} | {fmt(row['pruned'])} | "
            f"{fmt(row['finetuned'])}{' ' + row.get('note', '') if row.get('note') else ''} |"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"epochs": args.epochs, "seed": args.seed, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
