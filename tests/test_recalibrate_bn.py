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
    assert result.changed and len(result.summary.batch_norms) == 2
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


# ---------------------------------------------------------------- Before / Expected IR
def test_cnn_chain_ir() -> None:
    """The IR text stays as it was; only the four running statistics change, to the batch's."""
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    before = """\
@c1.weight: f32[8, 3, 3, 3]
@c1.bias: f32[8]
@b1.weight: f32[8]
@b1.bias: f32[8]
@c2.weight: f32[16, 8, 3, 3]
@c2.bias: f32[16]
@b2.weight: f32[16]
@b2.bias: f32[16]
@fc.weight: f32[10, 16]
@fc.bias: f32[10]
@b1.running_mean: f32[8]
@b1.running_var: f32[8]
@b1.num_batches_tracked: i64[]
@b2.running_mean: f32[16]
@b2.running_var: f32[16]
@b2.num_batches_tracked: i64[]
%x: f32[batch, 3, 16, 16] = input
%conv2d: f32[batch, 8, 16, 16] = conv2d(%x, @c1.weight, @c1.bias, [1, 1], [1, 1])
%batch_norm: f32[batch, 8, 16, 16] = batch_norm(%conv2d, @b1.weight, @b1.bias, \
@b1.running_mean, @b1.running_var, False, 0.1, 1e-05, False)
%relu: f32[batch, 8, 16, 16] = relu(%batch_norm)
%conv2d_1: f32[batch, 16, 16, 16] = conv2d(%relu, @c2.weight, @c2.bias, [1, 1], [1, 1])
%batch_norm_1: f32[batch, 16, 16, 16] = batch_norm(%conv2d_1, @b2.weight, @b2.bias, \
@b2.running_mean, @b2.running_var, False, 0.1, 1e-05, False)
%relu_1: f32[batch, 16, 16, 16] = relu(%batch_norm_1)
%mean: f32[batch, 16] = mean.dim(%relu_1, [2, 3])
%linear: f32[batch, 10] = linear(%mean, @fc.weight, @fc.bias)
return [%linear]
"""
    expected = before
    assert str(graph) == before
    tensors = {k: v.clone() for k, v in graph.module.state_dict().items()}
    batch = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    result = _run(graph, Calibration([batch]), [RecalibrateBN()])
    assert str(graph) == expected
    assert result.changed and graph.version == 1
    changed = {k for k, v in graph.module.state_dict().items() if not torch.equal(v, tensors[k])}
    assert changed == {"b1.running_mean", "b1.running_var", "b2.running_mean", "b2.running_var"}
    # one batch: each BN's input's mean and unbiased variance, b1 normalising by batch statistics
    with torch.no_grad():
        b1_in = model.c1(batch)
        normed = torch.nn.functional.batch_norm(
            b1_in, None, None, model.b1.weight, model.b1.bias, training=True
        )
        b2_in = model.c2(normed.relu())
    for name, seen in (("b1", b1_in), ("b2", b2_in)):
        mean, var = seen.mean((0, 2, 3)), seen.var((0, 2, 3), correction=1)
        torch.testing.assert_close(graph.tensor(f"{name}.running_mean"), mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(graph.tensor(f"{name}.running_var"), var, atol=1e-5, rtol=1e-4)
