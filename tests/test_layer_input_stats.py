"""layer-input-stats and StagedCalibration: sums match the inputs, staging matches one shot."""

from __future__ import annotations

import torch

from sparsec.calibration import Calibration
from sparsec.frontends import trace
from sparsec.passes.analysis import LayerInputStats
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
