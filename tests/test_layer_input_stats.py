"""layer-input-stats and StagedCalibration: sums match the inputs (conv: the unfolded input in
weight-matrix column order), staging matches one shot."""

from __future__ import annotations

import pytest
import torch

from sparsec.calibration import Calibration
from sparsec.frontends import trace
from sparsec.ops import from_weight_matrix, weight_matrix
from sparsec.passes.analysis import LayerInputStats, layer_input_stats
from sparsec.passes.analysis.layer_input_stats import StagedCalibration
from sparsec.pipeline import AnalysisManager


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()


def test_stats_equal_the_layer_inputs() -> None:
    model = _model()
    batches = [torch.randn(5, 6), torch.randn(3, 6)]
    graph = trace(model, (torch.randn(2, 6),))
    stats = AnalysisManager(graph, Calibration(batches)).get(LayerInputStats(gram=True))
    x = torch.cat(batches)
    hidden = torch.relu(model[0](x)).detach()
    assert stats["0.weight"].rows == 8
    torch.testing.assert_close(stats["0.weight"].column_norms(), x.norm(dim=0))
    torch.testing.assert_close(stats["2.weight"].gram, hidden.T @ hidden)
    assert graph.version == 0


def test_staged_equals_one_shot_and_sees_new_weights() -> None:
    graph = trace(_model(), (torch.randn(2, 6),))
    calibration = Calibration([torch.randn(4, 6) for _ in range(2)])
    one_shot = AnalysisManager(graph, calibration).get(LayerInputStats(gram=True))
    runner = StagedCalibration(graph, calibration, layers_per_stage=1)
    first = runner.stats(0, gram=True)
    torch.testing.assert_close(first["0.weight"].gram, one_shot["0.weight"].gram)
    runner.weights["0.weight"] = torch.zeros(8, 6)  # an earlier layer's new weight
    runner.advance(0)
    second = runner.stats(1, gram=True)
    expected = torch.relu(graph.tensor("0.bias")).expand(8, 8)
    torch.testing.assert_close(second["2.weight"].gram, expected.T @ expected)
    assert runner.peak_bytes == 2 * 4 * 8 * 4


_CONVS = {
    "3x3 stride 2": lambda: torch.nn.Conv2d(4, 6, 3, stride=2, padding=1),
    "2x3 same dilated": lambda: torch.nn.Conv2d(4, 6, (2, 3), padding="same", dilation=(1, 2)),
    "grouped": lambda: torch.nn.Conv2d(4, 6, 3, groups=2),
    "conv1d": lambda: torch.nn.Conv1d(4, 6, 3, padding=2, dilation=2),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # asymmetric: wanted
@pytest.mark.parametrize("chunk", [1 << 23, 1], ids=["one chunk", "sample by sample"])
@pytest.mark.parametrize("kind", list(_CONVS))
def test_conv_rows_are_the_unfolded_input_in_weight_matrix_order(
    kind: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layer_input_stats, "_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    conv = _CONVS[kind]().eval()
    spatial = (7, 5) if isinstance(conv, torch.nn.Conv2d) else (9,)
    batches = [torch.randn(3, 4, *spatial), torch.randn(2, 4, *spatial)]
    graph = trace(torch.nn.Sequential(conv), (batches[0],))
    am = AnalysisManager(graph, Calibration(batches))
    assert am.get(LayerInputStats()) == {}  # convs are opt-in
    stats = am.get(LayerInputStats(gram=True, layers=("conv",)))["0.weight"]
    # a conv whose weight matrix is the identity outputs every column of X, in matrix order
    groups, shape = conv.groups, tuple(conv.weight.shape)
    columns = weight_matrix(conv.weight).shape[1]
    probe = from_weight_matrix(torch.eye(columns).repeat(groups, 1), (groups * columns, *shape[1:]))
    conv_fn = torch.nn.functional.conv2d if len(spatial) == 2 else torch.nn.functional.conv1d
    x = torch.cat(
        [
            conv_fn(b, probe, None, conv.stride, conv.padding, conv.dilation, groups)
            .movedim(1, -1)
            .reshape(-1, groups, columns)
            for b in batches
        ]
    )
    assert stats.rows == x.shape[0]
    gram = torch.einsum("ngi,ngj->gij", x, x)
    norms = x.norm(dim=0)
    if groups == 1:
        gram, norms = gram[0], norms[0]
    torch.testing.assert_close(stats.gram, gram, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.column_norms(), norms)
