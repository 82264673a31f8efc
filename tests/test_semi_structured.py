"""2:4 on sparse tensor cores: which layers qualify, the rewrite, and the notes without a GPU."""

from __future__ import annotations

import pytest
import torch

from sparsec.backends.base import BackendOptions, default_backend
from sparsec.backends.semi_structured import (
    SemiStructured24,
    device_reason,
    layer_reason,
    two_four_nodes,
)
from sparsec.backends.torch_backend import TorchBackend
from sparsec.frontends import trace
from sparsec.ops import from_nm
from sparsec.passes.rewrite import LowerSparseWeights, Sparsify
from sparsec.pipeline import AnalysisManager, PassManager


def _lowered(n: int = 2, m: int = 4, hidden: int = 64) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 8)
    ).eval()
    graph = trace(model, (torch.randn(2, 64),))
    passes = [Sparsify(pattern="nm", n=n, m=m), LowerSparseWeights(gate="off")]
    PassManager(passes).run(graph, AnalysisManager(graph))
    return model, graph


def test_layer_reason_names_dtype_and_shape_limits() -> None:
    assert layer_reason(64, 64, torch.float32) is None
    assert layer_reason(128, 256, torch.float16) is None
    assert "multiple of the 32×32" in str(layer_reason(8, 64, torch.float32))
    assert "no semi-structured kernel" in str(layer_reason(64, 64, torch.float64))


def test_cpu_device_is_refused_with_reason() -> None:
    assert "CUDA-only" in str(device_reason(torch.device("cpu")))


def test_rewrite_replaces_eligible_layers_and_keeps_numbers() -> None:
    """With a stand-in conversion (the real one needs a GPU) the rewired graph is exact."""
    _, graph = _lowered()
    module = graph.module
    assert len(two_four_nodes(module)) == 2
    converted: list[torch.Size] = []

    def dense_stand_in(weight: torch.Tensor) -> torch.Tensor:
        converted.append(weight.shape)
        return weight.clone()

    lowered = graph.copy()
    result = SemiStructured24(convert=dense_stand_in).run(lowered, AnalysisManager(lowered))
    notes, rewired = result.notes, lowered.module
    assert result.changed
    assert converted == [torch.Size([64, 64])]  # the [8, 64] layer is below the 32-row block
    assert any("sparse tensor cores" in n for n in notes)
    assert any("reference kernel" in n and "32×32" in n for n in notes)
    assert len(two_four_nodes(rewired)) == 1 and len(two_four_nodes(module)) == 2
    x = torch.randn(5, 64)
    torch.testing.assert_close(rewired(x), module(x), atol=1e-5, rtol=1e-5)
    (dense,) = [n for n in rewired.graph.nodes if n.target is torch.nn.functional.linear]
    assert tuple(dense.meta["val"].shape)[1:] == (64,)  # shapes re-propagated through it


# ---------------------------------------------------------------- Before / Expected IR
def test_semi_structured_ir() -> None:
    _, graph = _lowered()
    second = """\
%relu: f32[batch, 64] = relu(%nm_linear_default)
@2_weight_values: f32[8, 32]
@2_weight_indices: u8[8, 32]
%nm_linear_default_1: f32[batch, 8] = nm_linear(%relu, @2_weight_values, @2_weight_indices, @2.bias, 2, 4)
return [%nm_linear_default_1]
"""
    before = """\
@0.bias: f32[64]
@2.bias: f32[8]
%input_1: f32[batch, 64] = input
@0_weight_values: f32[64, 32]
@0_weight_indices: u8[64, 32]
%nm_linear_default: f32[batch, 64] = nm_linear(%input_1, @0_weight_values, @0_weight_indices, @0.bias, 2, 4)
""" + second
    expected = """\
@0.bias: f32[64]
@2.bias: f32[8]
%input_1: f32[batch, 64] = input
@_sparsec_semi_structured_0: f32[64, 64]
%nm_linear_default: f32[batch, 64] = linear(%input_1, @_sparsec_semi_structured_0, @0.bias)
""" + second
    assert str(graph) == before
    values, indices = graph.tensor("0_weight_values"), graph.tensor("0_weight_indices")
    result = SemiStructured24(convert=torch.clone).run(graph, AnalysisManager(graph))
    assert result.changed and str(graph) == expected
    torch.testing.assert_close(graph.tensor("_sparsec_semi_structured_0"), from_nm(values, indices, 2, 4))
    assert not hasattr(graph.module, "0_weight_values")  # the compressed arrays are freed


def test_other_nm_patterns_are_not_touched() -> None:
    _, graph = _lowered(n=4, m=8)
    before = str(graph)
    result = SemiStructured24(convert=torch.clone).run(graph, AnalysisManager(graph))
    assert not result.changed and result.notes == () and str(graph) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU note")
def test_torch_backend_on_cuda_without_gpu_says_2_4_ran_reference_kernel() -> None:
    model, graph = _lowered()
    executable = TorchBackend().lower(graph, "cuda", BackendOptions())
    x = torch.randn(3, 64)
    assert executable(x).shape == (3, 8)
    assert any("2 2:4 layers ran the reference kernel" in n for n in executable.notes)


def test_default_backend_follows_the_graph() -> None:
    _, graph = _lowered()
    cpu, why = default_backend("cpu", graph)
    assert cpu.name == "tvm" and "2 sparse ops" in why
    cuda, why = default_backend("cuda", graph)
    assert cuda.name == "torch" and "sparse tensor cores" in why
    dense = trace(torch.nn.Linear(4, 4), (torch.randn(1, 4),))
    assert default_backend("cpu", dense)[0].name == "onnxruntime"
