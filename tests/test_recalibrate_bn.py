"""recalibrate-bn: running statistics become the calibration data's batch statistics."""

from __future__ import annotations

import pytest
import torch
from _criteria_models import linear_pair
from models import make_cnn_chain

from sparsec.calibration import Calibration
from sparsec.errors import PreconditionError
from sparsec.frontends import trace
from sparsec.passes.analysis import MagnitudeImportance
from sparsec.passes.rewrite import PruneChannels, RecalibrateBN
from sparsec.pipeline import AnalysisManager, PassManager, PassResult


def _run(graph: object, calibration: Calibration | None, passes: list) -> PassResult:  # type: ignore[type-arg]
    run = PassManager(passes).run(graph, AnalysisManager(graph, calibration))  # type: ignore[arg-type]
    result = run.results[-1][1]
    assert result is not None
    return result


def test_statistics_match_a_train_mode_pass() -> None:
    model, x = make_cnn_chain()
    batches = [
        torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    graph = trace(model, (x,))
    result = _run(graph, Calibration(batches), [RecalibrateBN()])
    assert result.changed and len(result.summary["batch_norms"]) == 2
    # the reference: torch's cumulative average (momentum=None) in train mode
    reference = make_cnn_chain()[0]
    for bn in (reference.b1, reference.b2):
        bn.reset_running_stats()
        bn.momentum = None
    reference.train()
    with torch.no_grad():
        for batch in batches:
            reference(batch)
    for name in ("b1", "b2"):
        bn = getattr(reference, name)
        torch.testing.assert_close(
            graph.tensor(f"{name}.running_mean"), bn.running_mean, atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            graph.tensor(f"{name}.running_var"), bn.running_var, atol=1e-5, rtol=1e-4
        )
    # weights are untouched; the user's model too
    torch.testing.assert_close(graph.tensor("c1.weight"), model.c1.weight)
    assert not torch.equal(model.b1.running_mean, graph.tensor("b1.running_mean"))


def test_after_pruning_statistics_follow_the_new_channels() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    batches = [torch.randn(8, 3, 16, 16)]
    _run(
        graph,
        Calibration(batches),
        [MagnitudeImportance(), PruneChannels(ratio=0.5), RecalibrateBN()],
    )
    assert graph.tensor("b2.running_var").shape == (8,)
    graph.verify()


def test_no_batch_norm_does_not_fire() -> None:
    model, x = linear_pair()
    graph = trace(model, (x,))
    result = _run(graph, Calibration([x]), [RecalibrateBN()])
    assert not result.changed and graph.version == 0


def test_needs_calibration() -> None:
    model, x = make_cnn_chain()
    with pytest.raises(PreconditionError, match="calibration"):
        _run(trace(model, (x,)), None, [RecalibrateBN()])
