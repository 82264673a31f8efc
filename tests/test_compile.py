"""sparsec.compile end to end: pruned CNN and MLP through ONNX Runtime, lazy compilation,
reports, and the user's model left untouched."""

from __future__ import annotations

import pytest
import torch
from models import make_cnn_chain, make_mlp

import sparsec
from sparsec.errors import BackendError, ConfigError, SparsecError, TraceError


@pytest.fixture(scope="module", params=["cnn", "mlp"])
def compiled_pair(
    request: pytest.FixtureRequest,
) -> tuple[torch.nn.Module, torch.Tensor, sparsec.CompiledModel]:
    model, x = make_cnn_chain() if request.param == "cnn" else make_mlp()
    return model, x, sparsec.compile(model, (x,), target="cpu", pipeline="structured-50")


def test_pruned_model_keeps_output_shape_and_loses_parameters(compiled_pair) -> None:
    model, x, compiled = compiled_pair
    with torch.no_grad():
        assert compiled(x).shape == model(x).shape
    report = compiled.report
    assert report.after.parameters < report.before.parameters
    assert report.after.macs < report.before.macs
    assert type(compiled.module) is type(model)  # the user's class, pruned
    assert {id(p) for p in compiled.module.parameters()} <= {
        id(p) for p in compiled.graph.module.parameters()
    }


def test_onnxruntime_matches_torch_at_other_batch_sizes(compiled_pair) -> None:
    _, x, compiled = compiled_pair
    for batch in (1, 5):
        xb = torch.cat([x] * 3)[:batch]
        with torch.no_grad():
            torch.testing.assert_close(compiled(xb), compiled.module(xb), atol=1e-4, rtol=1e-4)
    assert compiled.report.backend == "onnxruntime"
    assert compiled.report.backend_error is not None and compiled.report.backend_error < 1e-4


def test_structured_50_halves_each_prunable_group(compiled_pair) -> None:
    _, _, compiled = compiled_pair
    rows = [g for g in compiled.report.groups if not g["frozen"]]
    assert rows, "some group must be prunable"
    for row in rows:
        assert row["after"] == row["before"] - row["before"] // 2


def test_user_model_is_not_modified() -> None:
    model, x = make_cnn_chain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    compiled = sparsec.compile(model, (x,), pipeline="structured-50", backend="torch")
    assert model.training, "compile must restore the training flag"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # training the compiled module leaves the user's model alone too
    opt = torch.optim.SGD(compiled.module.parameters(), lr=0.1)
    compiled.module(x).sum().backward()
    opt.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_without_example_inputs_compiles_at_first_call() -> None:
    model, x = make_mlp()
    compiled = sparsec.compile(model, pipeline="structured-50", backend="torch")
    assert not compiled.compiled
    with pytest.raises(SparsecError, match="not compiled yet"):
        _ = compiled.report
    with torch.no_grad():
        y = compiled(x)
    assert compiled.compiled and y.shape == model(x).shape
    assert compiled.report.after.parameters < compiled.report.before.parameters


def test_report_markdown_has_the_sections(compiled_pair) -> None:
    _, _, compiled = compiled_pair
    text = compiled.report.to_markdown()
    for heading in (
        "parameters",
        "MACs per sample",
        "## Passes",
        "## Layer widths",
        "## Dependency groups",
    ):
        assert heading in text
    assert "Max |backend - torch|" in text
    phases = [name for name, _ in compiled.report.phase_times]
    assert phases == ["trace", "passes", "materialize", "lower", "numeric check"]
    assert "Compile time:" in text


def test_stop_after_and_skip_passes_leave_passes_out() -> None:
    model, x = make_cnn_chain()
    stopped = sparsec.compile(
        model, (x,), pipeline="structured-50", backend="torch", stop_after="magnitude-importance"
    )
    assert stopped.report.after.parameters == stopped.report.before.parameters
    assert any("prune-channels" in n and "did not run: stopped after magnitude-importance" in n for n in stopped.report.notes)
    skipped = sparsec.compile(model, (x,), pipeline="structured-50", backend="torch", skip_passes=["prune-channels"])
    assert skipped.report.after.parameters == skipped.report.before.parameters
    with pytest.raises(ConfigError, match="did you mean 'prune-channels'"):
        sparsec.compile(model, (x,), pipeline="structured-50", skip_passes=["prune-chanels"])


def test_pipeline_none_keeps_outputs() -> None:
    model, x = make_cnn_chain()
    compiled = sparsec.compile(model, (x,), pipeline="none")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    assert compiled.report.after.parameters == compiled.report.before.parameters


def test_cuda_target_without_provider_says_so() -> None:
    model, x = make_mlp()
    compiled = sparsec.compile(model, (x,), target="cuda", pipeline="none")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    if not torch.cuda.is_available():
        assert any("CPU" in note for note in compiled.report.notes)


def test_bad_arguments_fail_clearly() -> None:
    model, x = make_mlp()
    with pytest.raises(ConfigError, match="structured-50"):
        sparsec.compile(model, (x,), pipeline="structured-5O")
    with pytest.raises(ConfigError, match="target"):
        sparsec.compile(model, (x,), target="tpu")

    class Untraceable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(TraceError, match="Fix"):
        sparsec.compile(Untraceable(), (x,))


def test_save_and_load_round_trip(tmp_path, compiled_pair) -> None:
    _, x, compiled = compiled_pair
    path = compiled.save(tmp_path / "artifact")
    loaded = sparsec.load(path)
    xb = torch.cat([x, x, x])
    with torch.no_grad():
        torch.testing.assert_close(loaded(xb), compiled.module(xb), atol=1e-4, rtol=1e-4)
    assert loaded.manifest["pipeline"]["text"] == str(compiled.pipeline)


def test_default_backend_falls_back_to_torch_when_onnx_export_fails() -> None:
    class ExportRefuses(torch.nn.Module):
        """A custom op with no ONNX translation: torch runs it, the ONNX exporter cannot."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.sparsec_test.no_onnx(self.fc(x))

    library = torch.library.Library("sparsec_test", "DEF")  # noqa: F841 - kept alive for the test
    library.define("no_onnx(Tensor x) -> Tensor")
    library.impl("no_onnx", lambda x: x * 2, "CompositeExplicitAutograd")
    library.impl("no_onnx", lambda x: torch.empty_like(x), "Meta")
    x = torch.randn(2, 8)
    compiled = sparsec.compile(ExportRefuses().eval(), (x,), pipeline="none")
    assert compiled.report.backend == "torch"
    assert "onnxruntime failed" in compiled.report.backend_reason
    torch.testing.assert_close(compiled(x), ExportRefuses.forward(compiled.module, x))
    with pytest.raises(BackendError):
        sparsec.compile(ExportRefuses().eval(), (x,), pipeline="none", backend="onnxruntime")


def test_data_dependent_output_shape_compiles() -> None:
    class Masked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc2(torch.relu(self.fc1(x)))
            return h[h > 0]

    x = torch.randn(3, 4)
    compiled = sparsec.compile(Masked().eval(), (x,), backend="torch", pipeline="structured-50")
    assert compiled.report.after.parameters < compiled.report.before.parameters
    assert compiled(x).dim() == 1


def test_an_lstm_is_frozen_and_the_rest_is_pruned() -> None:
    class WithLstm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(4, 32), torch.nn.Linear(32, 16)
            self.lstm = torch.nn.LSTM(16, 8, batch_first=True)
            self.out = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, _ = self.lstm(self.fc2(torch.relu(self.fc1(x))))
            return self.out(y[:, -1])

    torch.manual_seed(0)
    model = WithLstm().eval()
    compiled = sparsec.compile(
        model, (torch.randn(2, 5, 4),), backend="torch", pipeline="structured-50"
    )
    assert compiled.module.fc1.out_features == 16 and compiled.module.lstm.input_size == 16
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), compiled.module(x))


def test_buffers_updated_in_forward_are_reported() -> None:
    class Counter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.add_(1)
            return self.fc(x)

    model = Counter().eval()
    compiled = sparsec.compile(model, (torch.randn(2, 4),), backend="torch", pipeline="none")
    assert any("updates buffers in place (calls)" in note for note in compiled.report.notes)
    assert float(model.calls) == 0.0  # traced on the graph's own copies
