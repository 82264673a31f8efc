"""Schedules: the cubic formula, step ratios that compose, iterative pruning and finetune."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import make_mlp

from sparsec.errors import PreconditionError
from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.passes.analysis import MagnitudeImportance
from sparsec.passes.rewrite import PruneChannels
from sparsec.schedules import (
    cubic_sparsity,
    finetune,
    one_shot,
    prune_iteratively,
    step_ratios,
    step_targets,
)


def test_cubic_schedule_values() -> None:
    assert cubic_sparsity(0, final=0.8, begin=0, end=10) == 0.0
    assert cubic_sparsity(10, final=0.8, begin=0, end=10) == pytest.approx(0.8)
    assert cubic_sparsity(5, final=0.8, begin=0, end=10) == pytest.approx(0.8 * (1 - 0.5**3))
    assert cubic_sparsity(20, final=0.8, begin=0, end=10) == pytest.approx(0.8)
    with pytest.raises(PreconditionError):
        cubic_sparsity(0, final=0.5, begin=3, end=3)


def test_step_ratios_compose_to_the_target() -> None:
    for schedule in ("linear", "cubic"):
        targets = step_targets(0.75, 3, schedule)  # type: ignore[arg-type]
        assert targets[-1] == pytest.approx(0.75)
        kept = 1.0
        for ratio in step_ratios(targets):
            kept *= 1.0 - ratio
        assert kept == pytest.approx(0.25)
    assert step_targets(0.6, 3) == pytest.approx([0.2, 0.4, 0.6])


def _make(ratio: float) -> list:  # type: ignore[type-arg]
    return [MagnitudeImportance(), PruneChannels(ratio=ratio, target="params")]


def test_iterative_pruning_calls_back_and_reaches_the_target() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    params = graph.num_parameters()
    steps: list[int] = []

    def callback(step: int, g: Graph) -> None:
        steps.append(step)
        with torch.no_grad():  # stands in for fine-tuning: weights change between steps
            g.module.fc1.weight.mul_(1.01)

    runs = prune_iteratively(graph, None, 0.5, steps=3, make_passes=_make, callback=callback)
    assert steps == [0, 1, 2] and len(runs) == 3
    assert 1 - graph.num_parameters() / params == pytest.approx(0.5, abs=0.03)


def test_one_shot() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    run = one_shot(graph, None, 0.5, _make)
    assert run.changed and graph.version == 1


def test_finetune_lowers_the_loss() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    one_shot(graph, None, 0.5, _make)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator))
        for _ in range(2)
    ]
    history = finetune(
        graph.module,
        batches,
        lambda out, b: F.cross_entropy(out, b[1]),
        epochs=3,
        lr=1e-2,
        inputs=lambda b: b[0],
        training=False,
    )
    assert history[-1] < history[0]
