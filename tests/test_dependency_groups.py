"""dependency-groups: which channels of which tensors are coupled, and what is frozen."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from models import ALL_MODELS, CNNChain, Example, make_cnn_chain
from torch import nn

from sparsec.errors import PassError, PreconditionError
from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.passes.analysis import DependencyGroups, DependencyInfo, MagnitudeImportance
from sparsec.passes.rewrite import PruneChannels
from sparsec.pipeline import AnalysisManager, PassManager


def _analyse(make: Callable[[], Example]) -> tuple[Graph, DependencyInfo]:
    model, x = make()
    graph = trace(model, (x,))
    return graph, AnalysisManager(graph).get(DependencyGroups())


def _layers(deps: DependencyInfo) -> list[list[str]]:
    return [g.layers for g in deps.groups]


@pytest.mark.parametrize("make", ALL_MODELS.values(), ids=ALL_MODELS.keys())
def test_classifier_output_is_frozen(make: Callable[[], Example]) -> None:
    graph, deps = _analyse(make)
    (classifier,) = deps.group_of("fc")
    assert classifier.layers == ["fc"]
    assert len(classifier.units) == 10
    assert set(classifier.frozen_units) == set(classifier.units.tolist())
    assert set(classifier.frozen_units.values()) == {"model output"}
    assert len(classifier.prunable_units) == 0
    # every other group has something to prune
    for group in deps.groups:
        if group is not classifier:
            assert len(group.prunable_units) == len(group.units) > 0, group.describe()
    assert deps.unruled_ops == {}


@pytest.mark.parametrize("make", ALL_MODELS.values(), ids=ALL_MODELS.keys())
def test_analysis_does_not_edit_the_graph(make: Callable[[], Example]) -> None:
    model, x = make()
    graph = trace(model, (x,))
    text, version = str(graph), graph.version
    DependencyGroups().run(graph, AnalysisManager(graph))
    assert str(graph) == text and graph.version == version


def test_model_input_channels_are_frozen() -> None:
    _, deps = _analyse(make_cnn_chain)
    assert deps.frozen_reasons[("x", 1)] == "model input"
    assert deps.frozen_reasons[("linear", 1)] == "model output"


def test_cnn_chain_group_params_and_roles() -> None:
    _, deps = _analyse(make_cnn_chain)
    assert _layers(deps) == [["c1"], ["c2"], ["fc"]]
    c1 = deps.groups[0]
    roles = {(p.target, p.axis): p.role for p in c1.params}
    assert roles == {
        ("c1.weight", 0): "producer",
        ("c1.bias", 0): "producer",
        ("b1.weight", 0): "norm",
        ("b1.bias", 0): "norm",
        ("b1.running_mean", 0): "norm",
        ("b1.running_var", 0): "norm",
        ("c2.weight", 1): "consumer",
    }
    assert len(c1.units) == 8
    assert c1.describe() == "group 0: 8 units [c1]"
    # one channel is one unit: the producer's row i and the consumer's column i share a label
    producer = deps.slot_units[next(p.slot for p in c1.params if p.target == "c1.weight")]
    consumer = deps.slot_units[next(p.slot for p in c1.params if p.target == "c2.weight")]
    np.testing.assert_array_equal(producer, consumer)
    assert len(np.unique(producer)) == 8


@pytest.mark.parametrize(
    ("model", "layers", "units"),
    [
        ("residual", ["c2", "stem.0"], 8),  # the add couples both branches
        ("concat", ["left.0", "right.0"], 16),  # cat: 6 + 10 channels, one group
        ("depthwise", ["dw", "stem.0"], 8),  # 16 dw outputs, two per input channel
        ("grouped", ["grouped.0"], 4),  # groups=2: channel i tied with i + 4
        ("squeeze_excite", ["se2", "stem.0"], 8),  # the gate multiplies the stem's channels
        ("flatten_head", ["features.0"], 8),  # 128 flattened features, 16 per channel
        ("split_cat", ["branch.0", "stem.0"], 12),  # 8 stem channels + 4 branch channels
    ],
)
def test_coupled_groups(model: str, layers: list[str], units: int) -> None:
    _, deps = _analyse(ALL_MODELS[model])
    (group,) = [g for g in deps.groups if g.layers == layers]
    assert len(group.units) == units


def test_grouped_conv_ties_channels_across_groups() -> None:
    _, deps = _analyse(ALL_MODELS["grouped"])
    (stem,) = deps.group_of("stem.0")
    labels = deps.slot_units[next(p.slot for p in stem.params if p.target == "stem.0.weight")]
    np.testing.assert_array_equal(labels[:4], labels[4:])
    assert len(np.unique(labels)) == 4


def test_flatten_head_maps_features_to_channels() -> None:
    _, deps = _analyse(ALL_MODELS["flatten_head"])
    (features,) = deps.group_of("features.0")
    channel = deps.slot_units[
        next(p.slot for p in features.params if p.target == "features.0.weight")
    ]
    hidden = deps.slot_units[next(p.slot for p in features.params if p.target == "hidden.weight")]
    assert len(hidden) == 8 * 16
    np.testing.assert_array_equal(hidden, np.repeat(channel, 16))


class _Flip(nn.Module):
    """An op without an OpInfo (aten.flip) on the channel axis of c1."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.flip(self.c1(x), dims=[1])).mean(dim=(2, 3)))


def test_op_without_rule_freezes_with_reason() -> None:
    graph = trace(_Flip().eval(), (torch.randn(2, 3, 16, 16),))
    deps = AnalysisManager(graph).get(DependencyGroups())
    assert deps.unruled_ops == {"aten.flip.default": ["flip"]}
    (c1,) = deps.group_of("c1")
    assert set(c1.frozen_units.values()) == {
        "channels of %flip flow through aten.flip.default, which has no rule"
    }
    assert len(c1.prunable_units) == 0
    (c2,) = deps.group_of("c2")
    assert len(c2.prunable_units) == 8
    # pruning leaves the frozen layer whole and still runs
    PassManager([PruneChannels(ratio=0.5)]).run(graph)
    graph.verify()
    assert graph.tensor("c1.weight").shape[0] == 8
    assert graph.tensor("c2.weight").shape[0] == 4


class _ShiftedWindows(nn.Module):
    """Swin's shifted windows: the spatial axes roll, the channels pass through."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.roll(torch.relu(self.c1(x)), shifts=(2, -1), dims=(2, 3)))


def test_roll_freezes_only_the_rolled_axes() -> None:
    model = _ShiftedWindows().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = trace(model, (x,))
    deps = AnalysisManager(graph).get(DependencyGroups())
    assert deps.unruled_ops == {}
    (c1,) = deps.group_of("c1")
    assert len(c1.prunable_units) == 8  # the channels flow through the roll
    # removing channels that were zeroed keeps the outputs: the roll links them correctly
    with torch.no_grad():
        model.c1.weight[::2] = 0
        model.c1.bias[::2] = 0
    graph = trace(model, (x,))
    PassManager([MagnitudeImportance(), PruneChannels(ratio=0.5)]).run(graph)
    graph.verify()
    assert graph.tensor("c1.weight").shape[0] == 4
    for batch in (x, torch.randn(3, 3, 8, 8)):
        torch.testing.assert_close(graph(batch), model(batch), atol=1e-5, rtol=1e-5)


def test_roll_of_a_channel_axis_or_of_the_flattened_tensor_freezes_it() -> None:
    class RollChannels(nn.Module):
        def __init__(self, dims: tuple[int, ...]) -> None:
            super().__init__()
            self.c1, self.dims = nn.Conv2d(3, 8, 1), dims

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.roll(self.c1(x), shifts=(1,) * max(len(self.dims), 1), dims=self.dims)

    for dims, reason in (((1,), "%roll rolls axis 1"), ((), "%roll rolls the flattened tensor")):
        graph = trace(RollChannels(dims).eval(), (torch.randn(2, 3, 4, 4),))
        (c1,) = AnalysisManager(graph).get(DependencyGroups()).group_of("c1")
        assert len(c1.prunable_units) == 0
        assert reason in set(c1.frozen_units.values()).pop()


def test_groups_are_deterministic() -> None:
    _, first = _analyse(make_cnn_chain)
    _, second = _analyse(make_cnn_chain)
    assert [g.describe() for g in first.groups] == [g.describe() for g in second.groups]
    for a, b in zip(first.groups, second.groups, strict=True):
        assert a.params == b.params
        np.testing.assert_array_equal(a.units, b.units)


def test_runs_on_meta_weights() -> None:
    with torch.device("meta"):
        model = CNNChain().eval()
    graph = trace(model, (torch.empty(2, 3, 16, 16, device="meta"),))
    am = AnalysisManager(graph)
    deps = am.get(DependencyGroups())
    assert [g.describe() for g in deps.groups] == [
        "group 0: 8 units [c1]",
        "group 1: 16 units [c2]",
        "group 2: 10 units, 10 frozen [fc]",
    ]
    with pytest.raises(PreconditionError, match="meta device"):
        am.get(MagnitudeImportance())
    with pytest.raises(PassError, match="meta device"):
        PassManager([PruneChannels(ratio=0.5)]).run(graph)
