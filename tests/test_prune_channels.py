"""prune-channels: the IR it produces, structure and the changed flag, numbers, and no-ops."""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.fx as fx
from models import (
    ALL_MODELS,
    TINY_MLP_IR,
    ZERO_EQUIVALENT_MODELS,
    Example,
    make_cnn_chain,
    make_mlp,
    make_split_cat,
    make_tiny_mlp,
)

from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.passes.analysis import DependencyGroups, DependencyInfo, MagnitudeImportance
from sparsec.passes.rewrite import PruneChannels
from sparsec.passes.rewrite.shrink import remove_units
from sparsec.pipeline import AnalysisManager, PassManager, PassResult, VerifyEach

aten = torch.ops.aten


def _prune(graph: Graph, p: PruneChannels) -> PassResult:
    (result,) = [r for _, r in PassManager([p], instruments=[VerifyEach()]).run(graph).results]
    assert result is not None
    return result


def _choose(graph: Graph, p: PruneChannels) -> tuple[DependencyInfo, np.ndarray]:
    am = AnalysisManager(graph)
    deps, scores = am.get(DependencyGroups()), am.get(MagnitudeImportance())
    chosen = [p.choose(g, scores[g.index]) for g in deps.groups]
    return deps, np.concatenate(chosen)


# ---------------------------------------------------------------- every model
@pytest.mark.parametrize("make", ALL_MODELS.values(), ids=ALL_MODELS.keys())
def test_prune_half_runs_and_shrinks(make: Callable[[], Example]) -> None:
    model, x = make()
    graph = trace(model, (x,))
    before = graph.num_parameters()
    deps = AnalysisManager(graph).get(DependencyGroups())
    groups_before = {tuple(g.layers): len(g.units) for g in deps.groups}
    result = _prune(graph, PruneChannels(ratio=0.5))
    assert result.changed
    assert graph.version == 1
    graph.verify()
    assert graph.num_parameters() < before
    for batch in (1, 5):
        inputs = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            assert graph(inputs).shape == model(inputs).shape == (batch, 10)
    # the user's model is untouched
    assert sum(p.numel() for p in model.parameters()) == before
    # every prunable group lost half its units, the classifier none; groups survive pruning
    after = {
        tuple(g.layers): len(g.units) for g in AnalysisManager(graph).get(DependencyGroups()).groups
    }
    for layers, units in groups_before.items():
        assert after[layers] == (units if layers == ("fc",) else units - units // 2), layers


# ZERO-CHANNEL EQUIVALENCE. Zeroing a unit's producer rows, biases and BN weight/bias makes
# that channel exactly 0 wherever it flows: relu(0) = 0, a residual add of two zero channels
# is 0, concatenation and split move it, a depthwise conv of a zero input with zero weights
# is 0, and the SE gate multiplies the zero channel (sigmoid(0) = 0.5 times 0 is 0).
# Consumers then read only zeros from it, so removing the unit must not change outputs.
# This does NOT hold where a zero channel still changes other channels: LayerNorm (the
# mean/variance over channels include it), a mean or softmax over the channel axis (e.g. an
# SE variant that pools channels), or a gate whose *zeroed producer* feeds the gate but not
# the gated tensor. None of the models in tests/models.py do that; keep such models out of
# ZERO_EQUIVALENT_MODELS.
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _zero_units(graph: Graph, deps: DependencyInfo, removed: np.ndarray) -> int:
    """Zero every producer/norm slice of `removed` (not consumers, not running stats)."""
    zeroed = 0
    with graph.rewrite("test-zero") as rw:
        for group in deps.groups:
            for param in group.params:
                if param.role not in ("producer", "norm") or param.target.endswith(_NORM_STATS):
                    continue
                index = np.nonzero(np.isin(deps.slot_units[param.slot], removed))[0]
                if len(index) == 0:
                    continue
                value = graph.tensor(param.target).detach().clone()
                value.index_fill_(param.axis, torch.as_tensor(index), 0.0)
                rw.replace_tensor(param.target, value)
                zeroed += 1
    return zeroed


@pytest.mark.parametrize("make", ZERO_EQUIVALENT_MODELS.values(), ids=ZERO_EQUIVALENT_MODELS.keys())
def test_pruning_zeroed_units_keeps_outputs(make: Callable[[], Example]) -> None:
    model, x = make()
    graph = trace(model, (x,))
    deps, removed = _choose(graph, PruneChannels(ratio=0.5))
    assert len(removed) > 0
    assert _zero_units(graph, deps, removed) > 0
    inputs = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = graph(inputs)
        assert not torch.allclose(reference, model(inputs), atol=1e-3)  # zeroing mattered
    params = graph.num_parameters()
    remove_units(graph, deps, removed, "test-prune")
    graph.verify()
    assert graph.num_parameters() < params
    with torch.no_grad():
        torch.testing.assert_close(graph(inputs), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", ZERO_EQUIVALENT_MODELS.values(), ids=ZERO_EQUIVALENT_MODELS.keys())
def test_prune_channels_picks_the_zeroed_units(make: Callable[[], Example]) -> None:
    # after zeroing, magnitude scores those units 0, so the pass itself removes exactly them
    model, x = make()
    graph = trace(model, (x,))
    deps, removed = _choose(graph, PruneChannels(ratio=0.5))
    _zero_units(graph, deps, removed)
    with torch.no_grad():
        reference = graph(x)
    assert _choose(graph, PruneChannels(ratio=0.5))[1].tolist() == removed.tolist()
    _prune(graph, PruneChannels(ratio=0.5))
    with torch.no_grad():
        torch.testing.assert_close(graph(x), reference, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Before / Expected IR
def test_tiny_mlp_ir() -> None:
    model, x = make_tiny_mlp()
    with torch.no_grad():
        # rows 1 and 3 of fc1 get the smallest norms, so they go
        model.fc1.weight.mul_(torch.tensor([1.0, 0.01, 1.0, 0.01])[:, None])
    graph = trace(model, (x,))
    before = TINY_MLP_IR
    expected = """\
@fc1.weight: f32[2, 4]
@fc1.bias: f32[2]
@fc2.weight: f32[2, 2]
@fc2.bias: f32[2]
%x: f32[batch, 4] = input
%linear: f32[batch, 2] = linear(%x, @fc1.weight, @fc1.bias)
%relu: f32[batch, 2] = relu(%linear)
%linear_1: f32[batch, 2] = linear(%relu, @fc2.weight, @fc2.bias)
return [%linear_1]
"""
    assert str(graph) == before
    result = _prune(graph, PruneChannels(ratio=0.5))
    assert str(graph) == expected
    assert result.changed
    torch.testing.assert_close(graph.tensor("fc1.weight"), model.fc1.weight[[0, 2]])
    torch.testing.assert_close(graph.tensor("fc1.bias"), model.fc1.bias[[0, 2]])
    torch.testing.assert_close(graph.tensor("fc2.weight"), model.fc2.weight[:, [0, 2]])
    torch.testing.assert_close(graph.tensor("fc2.bias"), model.fc2.bias)


# ---------------------------------------------------------------- options
def test_ignore_keeps_the_layer_whole() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    result = _prune(graph, PruneChannels(ratio=0.5, ignore=("fc.*",)))
    assert result.changed
    # fc reads c2's channels, so c2's group is left whole too; c1 is pruned
    assert graph.tensor("fc.weight").shape == (10, 16)
    assert graph.tensor("c2.weight").shape == (16, 4, 3, 3)
    assert graph.tensor("c1.weight").shape == (4, 3, 3, 3)


def test_ignore_matches_layer_names() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    _prune(graph, PruneChannels(ratio=0.5, ignore=("c1",)))
    assert graph.tensor("c1.weight").shape == (8, 3, 3, 3)
    assert graph.tensor("c2.weight").shape == (8, 8, 3, 3)


def test_ignore_everything_changes_nothing() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    text = str(graph)
    result = _prune(graph, PruneChannels(ratio=0.5, ignore=("*",)))
    assert not result.changed
    assert str(graph) == text and graph.version == 0


def test_min_channels_is_respected() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    _prune(graph, PruneChannels(ratio=0.9, min_channels=6))
    assert graph.tensor("c1.weight").shape[0] == 6  # 8 units: floor(7.2) = 7 > 8 - 6
    assert graph.tensor("c2.weight").shape[0] == 6  # 16 units: floor(14.4) = 14 > 16 - 6


def test_min_channels_above_group_size_prunes_nothing() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    result = _prune(graph, PruneChannels(ratio=0.5, min_channels=64))
    assert not result.changed and graph.version == 0


@pytest.mark.parametrize("make", ALL_MODELS.values(), ids=ALL_MODELS.keys())
def test_ratio_zero_changes_nothing(make: Callable[[], Example]) -> None:
    model, x = make()
    graph = trace(model, (x,))
    text, params = str(graph), graph.num_parameters()
    result = _prune(graph, PruneChannels(ratio=0.0))
    assert result.changed is False
    assert graph.version == 0
    assert str(graph) == text and graph.num_parameters() == params


def test_small_ratio_rounds_down() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    # floor(0.1 * 8) = 0 for c1, floor(0.1 * 16) = 1 for c2
    _prune(graph, PruneChannels(ratio=0.1))
    assert graph.tensor("c1.weight").shape[0] == 8
    assert graph.tensor("c2.weight").shape[0] == 15


# ---------------------------------------------------------------- shape constants
def _conv_reading(graph: Graph, weight: str) -> fx.Node:
    (conv,) = [
        n
        for n in graph.nodes
        if n.target is aten.conv2d.default and getattr(n.args[1], "target", None) == weight
    ]
    return conv


def test_depthwise_groups_argument_updated() -> None:
    model, x = ALL_MODELS["depthwise"]()
    graph = trace(model, (x,))
    dw = _conv_reading(graph, "dw.weight")
    assert dw.args[6] == 8
    _prune(graph, PruneChannels(ratio=0.5))
    dw = graph.node(dw.name)
    assert dw.args[6] == 4
    assert graph.tensor("stem.0.weight").shape[0] == 4
    assert graph.tensor("dw.weight").shape == (8, 1, 3, 3)  # multiplier 2 kept
    assert graph.tensor("dw_bn.weight").shape == (8,)
    assert graph.tensor("pw.0.weight").shape == (6, 8, 1, 1)


def test_grouped_conv_keeps_groups_equal() -> None:
    model, x = ALL_MODELS["grouped"]()
    graph = trace(model, (x,))
    _prune(graph, PruneChannels(ratio=0.5))
    conv = _conv_reading(graph, "grouped.0.weight")
    assert conv.args[6] == 2
    assert graph.tensor("stem.0.weight").shape[0] == 4
    assert graph.tensor("grouped.0.weight").shape == (4, 2, 3, 3)


def test_split_sizes_updated() -> None:
    model, x = make_split_cat()
    graph = trace(model, (x,))
    deps, removed = _choose(graph, PruneChannels(ratio=0.5))
    (stem,) = deps.group_of("stem.0")
    stem_units = deps.slot_units[next(p.slot for p in stem.params if p.target == "stem.0.weight")]
    gone = np.isin(stem_units, removed)
    expected = [int((~gone[:4]).sum()), int((~gone[4:]).sum())]
    _prune(graph, PruneChannels(ratio=0.5))
    (split,) = [n for n in graph.nodes if n.target is aten.split_with_sizes.default]
    assert list(split.args[1]) == expected
    assert sum(expected) == graph.tensor("stem.0.weight").shape[0]
    halves = [n for n in graph.nodes if n.target is operator.getitem]
    assert [n.meta["val"].shape[1] for n in halves] == expected


class _SplitEvenly(torch.nn.Module):
    """torch.split with an int size: aten.split.Tensor, which cannot express uneven sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.stem(x), 4, dim=1)
        return self.fc((torch.relu(a) + b).mean(dim=(2, 3)))


def test_split_with_int_size_becomes_split_with_sizes() -> None:
    torch.manual_seed(0)
    model = _SplitEvenly().eval()
    graph = trace(model, (torch.randn(2, 3, 16, 16),))
    assert any(n.target is aten.split.Tensor for n in graph.nodes)
    _prune(graph, PruneChannels(ratio=0.5))
    (split,) = [n for n in graph.nodes if "split" in str(n.target)]
    assert split.target is aten.split_with_sizes.default
    assert list(split.args[1]) == [2, 2]  # a[i] + b[i] ties the halves
    graph(torch.randn(3, 3, 16, 16))


# ---------------------------------------------------------------- after pruning
def test_pruned_graph_trains_and_reexports() -> None:
    model, x = make_cnn_chain()
    graph = trace(model, (x,))
    _prune(graph, PruneChannels(ratio=0.5))
    loss = graph(x).square().mean()
    loss.backward()
    assert graph.module.c1.weight.grad is not None
    assert graph.module.c1.weight.grad.shape == (4, 3, 3, 3)
    program = graph.export_program()
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), graph(x))


def test_pruning_twice_composes() -> None:
    model, x = make_mlp()
    graph = trace(model, (x,))
    PassManager([PruneChannels(ratio=0.5), PruneChannels(ratio=0.5)]).run(graph)
    assert graph.version == 2
    assert graph.tensor("fc1.weight").shape == (8, 16)
    assert graph.tensor("fc2.weight").shape == (8, 8)
    graph.verify()
