"""The onnxruntime backend matches torch, keeps dynamic dims named, and says what it cannot do."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from models import SmallCNN
from torch import nn

from sparsec.backends.base import (
    BackendOptions,
    Severity,
    available_backends,
    default_backend,
    get_backend,
)
from sparsec.backends.onnxruntime import MODEL_FILE, OnnxRuntimeBackend
from sparsec.errors import BackendError, ConfigError
from sparsec.frontends import trace
from sparsec.ir.graph import Graph

ATOL = 1e-4


class NamedOutputsCNN(SmallCNN):
    """SmallCNN returning its logits and its features by name."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        features = self.features(x)
        return {"logits": self.fc(features.mean(dim=(2, 3))), "features": features}


class TokenMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.fc1(self.embed(ids))) * mask.unsqueeze(-1).float()
        return self.fc2(hidden), hidden.sum(dim=1)


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial statistics so folding it is actually tested."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _close(actual: object, expected: object) -> None:
    flat_actual, spec_actual = torch.utils._pytree.tree_flatten(actual)
    flat_expected, spec_expected = torch.utils._pytree.tree_flatten(expected)
    assert spec_actual == spec_expected
    for a, e in zip(flat_actual, flat_expected, strict=True):
        torch.testing.assert_close(a, e.detach(), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def cnn_graph() -> Graph:
    torch.manual_seed(0)
    return trace(_trained_bn(NamedOutputsCNN()), (torch.randn(2, 3, 16, 16),))


@pytest.fixture(scope="module")
def mlp_graph() -> Graph:
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 5))
    return trace(TokenMLP().eval(), {"ids": ids, "mask": torch.ones(2, 5, dtype=torch.long)})


@pytest.fixture(scope="module")
def cnn_executable(cnn_graph: Graph):
    return OnnxRuntimeBackend().lower(cnn_graph, "cpu", BackendOptions(threads=1))


@pytest.mark.parametrize("batch", [2, 1, 5])
def test_cnn_matches_torch_at_any_batch(cnn_graph: Graph, cnn_executable, batch: int) -> None:
    x = torch.randn(batch, 3, 16, 16)
    out = cnn_executable(x)
    assert set(out) == {"logits", "features"}
    _close(out, cnn_graph.module(x))


def test_mlp_matches_torch_with_other_batch_and_seq(mlp_graph: Graph) -> None:
    executable = OnnxRuntimeBackend().lower(mlp_graph, "cpu", BackendOptions())
    ids, mask = torch.randint(0, 50, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    mask[:, 6:] = 0
    out = executable(mask=mask, ids=ids)
    assert isinstance(out, tuple) and len(out) == 2
    _close(out, mlp_graph.module(ids=ids, mask=mask))


def test_onnx_inputs_and_dynamic_dims_are_named(cnn_executable, tmp_path) -> None:
    cnn_executable.save(tmp_path)
    model = onnx.load(str(tmp_path / MODEL_FILE))
    dims = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "x": ["batch", 3, 16, 16],
        "output_0": ["batch", 10],
        "output_1": ["batch", 16, 16, 16],
    }
    assert cnn_executable.files() == (MODEL_FILE,)
    assert not any(path.name.endswith(".data") for path in tmp_path.iterdir())


def test_saved_executable_loads_and_matches(cnn_graph: Graph, cnn_executable, tmp_path) -> None:
    metadata = cnn_executable.save(tmp_path)
    loaded = OnnxRuntimeBackend().load(tmp_path, metadata)
    x = torch.randn(4, 3, 16, 16)
    _close(loaded(x), cnn_graph.module(x))


def test_lowering_is_quiet(mlp_graph: Graph, capfd) -> None:
    OnnxRuntimeBackend().lower(mlp_graph, "cpu", BackendOptions())
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA provider present"
)
def test_cuda_target_without_provider_runs_on_cpu_and_says_so(
    cnn_graph: Graph, cnn_executable, tmp_path
) -> None:
    metadata = {**cnn_executable.save(tmp_path), "target": "cuda"}
    executable = OnnxRuntimeBackend().load(tmp_path, metadata)
    assert any("CUDA" in note and "CPU" in note for note in executable.notes)
    x = torch.randn(2, 3, 16, 16)
    _close(executable(x), cnn_graph.module(x))
    assert cnn_executable.notes == []


def test_wrong_inputs_are_named(cnn_executable) -> None:
    with pytest.raises(BackendError, match="structure differs"):
        cnn_executable(torch.randn(2, 3, 16, 16), torch.randn(2))
    with pytest.raises(BackendError, match="keyword inputs"):
        cnn_executable(torch.randn(2, 3, 16, 16), y=torch.randn(2))


def test_non_tensor_output_is_an_error_diagnostic() -> None:
    class ReturnsInt(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
            return x * 2, 3

    graph = trace(ReturnsInt(), (torch.randn(2, 3),))
    backend = OnnxRuntimeBackend()
    diagnostics = backend.check(graph)
    assert [d.severity for d in diagnostics] == [Severity.ERROR]
    assert "output 1" in diagnostics[0].message
    with pytest.raises(BackendError, match="not a tensor"):
        backend.lower(graph, "cpu", BackendOptions())


def test_clean_graph_has_no_diagnostics(cnn_graph: Graph) -> None:
    assert OnnxRuntimeBackend().check(cnn_graph) == []


def test_registry() -> None:
    assert set(available_backends()) >= {"onnxruntime", "torch"}
    assert default_backend("cpu")[0].name == "onnxruntime"
    assert default_backend("cuda")[0].name == "onnxruntime"
    assert get_backend("torch").name == "torch"
    with pytest.raises(BackendError, match="onnxruntime, torch"):
        get_backend("tensorrt")
    with pytest.raises(BackendError, match="cpu, cuda"):
        default_backend("tpu")
    with pytest.raises(BackendError, match="no target"):
        OnnxRuntimeBackend().lower(None, "tpu", BackendOptions())  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"threads": 0}, {"threads": 2.5}, {"opset": 9}])
def test_invalid_options_are_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        BackendOptions(**options)  # type: ignore[arg-type]


@torch.library.custom_op("sparsec_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _twice_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def test_export_failure_names_the_op() -> None:
    class UsesCustomOp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _twice(x) + 1

    graph = trace(UsesCustomOp(), (torch.randn(2, 3),))
    backend = OnnxRuntimeBackend()
    diagnostics = backend.check(graph)
    assert [d.severity for d in diagnostics] == [Severity.WARNING]
    assert "sparsec_test::twice" in diagnostics[0].message
    with pytest.raises(BackendError, match=r"No ONNX function found for .*sparsec_test\.twice"):
        backend.lower(graph, "cpu", BackendOptions())
