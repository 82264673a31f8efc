"""Importance criteria on real data: scikit-learn's digits (8x8 images, 10 classes, no download).

A small residual CNN with BatchNorm is trained with a fixed seed, then every criterion prunes
it to half its MACs (`prune-channels{target=macs}`). For each criterion the table gives test
accuracy right after pruning, after BatchNorm re-estimation, after least-squares
reconstruction, after both (the figure for users who cannot retrain), and after one epoch of
fine-tuning of the plainly pruned model; plus the MACs ratio achieved. Random is the median
of three seeds. Prints a markdown table with the machine and writes JSON.

Run: `python benchmarks/criteria.py [--ratio 0.5] [--allocation local|global]`
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparsec.calibration import Calibration  # noqa: E402
from sparsec.frontends import trace  # noqa: E402
from sparsec.ir import Graph  # noqa: E402
from sparsec.materialize import materialize  # noqa: E402
from sparsec.passes.analysis import (  # noqa: E402
    ActivationImportance,
    BNScaleImportance,
    FisherImportance,
    LAMPImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    WandaImportance,
)
from sparsec.passes.rewrite import (  # noqa: E402
    PruneChannels,
    PruneChannelsSummary,
    RecalibrateBN,
)
from sparsec.pipeline import Analysis, AnalysisManager, Pass, PassManager  # noqa: E402
from sparsec.schedules import finetune  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]
SEED = 0


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus identity, then relu."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(channels)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class DigitsResNet(nn.Module):
    """stem 32 @8x8 -> block -> down 64 @4x4 -> block -> mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.block1 = Block(32)
        self.down = nn.Sequential(
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        self.block2 = Block(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _data() -> tuple[list[Batch], Batch]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(
        range(len(y)), test_size=0.2, random_state=SEED, stratify=y.numpy()
    )
    xtr, ytr = x[train_idx], y[train_idx]
    mean, std = xtr.mean(), xtr.std()
    generator = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(ytr), generator=generator)
    batches = [
        ((xtr[order[i : i + 64]] - mean) / std, ytr[order[i : i + 64]])
        for i in range(0, len(ytr), 64)
    ]
    return batches, ((x[test_idx] - mean) / std, y[test_idx])


def _loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(outputs, batch[1])


def _first(batch: Batch) -> torch.Tensor:
    return batch[0]


def _accuracy(module: Callable[[torch.Tensor], torch.Tensor], test: Batch) -> float:
    with torch.no_grad():
        return float((module(test[0]).argmax(1) == test[1]).float().mean())


def _train(train: list[Batch], epochs: int) -> DigitsResNet:
    torch.manual_seed(SEED)
    model = DigitsResNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * len(train))
    model.train()
    for _ in range(epochs):
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def _prune(
    model: nn.Module, example: torch.Tensor, passes: list[Pass], calibration: Calibration
) -> tuple[Graph, PruneChannelsSummary]:
    graph = trace(model, (example,))
    run = PassManager(passes).run(graph, AnalysisManager(graph, calibration))
    with torch.no_grad():
        summary = next(
            r.summary
            for _, r in run.results
            if r is not None and isinstance(r.summary, PruneChannelsSummary)
        )
    return graph, summary


def _evaluate(
    model: nn.Module, criterion: Analysis, train: list[Batch], test: Batch, args: argparse.Namespace
) -> dict[str, Any]:
    calibration = Calibration(train[: args.calibration_batches], loss_fn=_loss, inputs=_first)
    example = train[0][0][:2]

    def prune(**options: Any) -> PruneChannels:
        return PruneChannels(ratio=args.ratio, target="macs", allocation=args.allocation, **options)

    row: dict[str, Any] = {}
    started = time.perf_counter()
    graph, summary = _prune(model, example, [criterion, prune()], calibration)
    row["pruning_s"] = round(time.perf_counter() - started, 3)
    row["macs_removed"] = summary.target["achieved"]
    row["pruned"] = _accuracy(graph, test)
    graph_bn, _ = _prune(model, example, [criterion, prune(), RecalibrateBN()], calibration)
    row["bn"] = _accuracy(graph_bn, test)
    graph_rc, summary_rc = _prune(model, example, [criterion, prune(reconstruct=True)], calibration)
    row["reconstruct"] = _accuracy(graph_rc, test)
    row["reconstruction_error"] = summary_rc.reconstruction or []
    graph_both, _ = _prune(
        model, example, [criterion, prune(reconstruct=True), RecalibrateBN()], calibration
    )
    row["reconstruct_bn"] = _accuracy(graph_both, test)
    torch.manual_seed(SEED)
    finetune(materialize(model, graph).module, train, _loss, epochs=1, lr=1e-3, inputs=_first)
    row["finetuned_1ep"] = _accuracy(graph, test)
    return row


CRITERIA: dict[str, Callable[[], Analysis]] = {
    "magnitude-l1": lambda: MagnitudeImportance(norm=1),
    "magnitude-l2": lambda: MagnitudeImportance(norm=2),
    "bn-scale": lambda: BNScaleImportance(),
    "lamp": lambda: LAMPImportance(),
    "taylor": lambda: TaylorImportance(),
    "fisher": lambda: FisherImportance(),
    "activation-mean": lambda: ActivationImportance(statistic="mean-abs"),
    "activation-apoz": lambda: ActivationImportance(statistic="apoz"),
    "wanda": lambda: WandaImportance(),
}
_COLUMNS = ("pruned", "bn", "reconstruct", "reconstruct_bn", "finetuned_1ep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--allocation", choices=("local", "global"), default="local")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "criteria.json"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree deprecations
    torch.set_num_threads(args.threads)
    train, test = _data()
    started = time.perf_counter()
    model = _train(train, args.epochs)
    train_s = time.perf_counter() - started
    dense = _accuracy(model, test)
    rows: dict[str, dict[str, Any]] = {}
    for name, make in CRITERIA.items():
        rows[name] = _evaluate(model, make(), train, test, args)
        print(f"{name}: " + ", ".join(f"{c}={rows[name][c]:.4f}" for c in _COLUMNS), flush=True)
    seeds = [_evaluate(model, RandomImportance(seed=s), train, test, args) for s in range(3)]
    rows["random (median of 3 seeds)"] = {
        key: statistics.median(r[key] for r in seeds)
        for key in ("macs_removed", "pruning_s", *_COLUMNS)
    }
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    header = (
        f"Digits test accuracy, dense {dense:.2%} (trained {args.epochs} epochs in {train_s:.1f} s); "
        f"{args.ratio:.0%} of MACs removed, {args.allocation} allocation; {machine}\n\n"
        "| criterion | MACs removed | pruned | + BN re-est. | + reconstruction | + reconstruction + BN | pruned + 1 epoch FT |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    lines = [header]
    for name, row in rows.items():
        cells = " | ".join(f"{row[c]:.2%}" for c in _COLUMNS)
        lines.append(f"| {name} | {row['macs_removed']:.1%} | {cells} |")
    table = "\n".join(lines)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "dense_accuracy": dense,
        "train_seconds": train_s,
        "ratio": args.ratio,
        "allocation": args.allocation,
        "machine": machine,
        "criteria": rows,
        "random_seeds": seeds,
        "table": table,
    }
    args.out.write_text(json.dumps(payload, indent=2, default=float))


if __name__ == "__main__":
    main()
