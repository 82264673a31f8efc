"""lower-sparse-weights: the IR it produces, the break-even gate, numbers, ORT end to end, artifacts;
1×1 convs as sparse linears over channels, other convs dense with their mask."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from models import TINY_MLP_IR, make_depthwise, make_tiny_mlp

import sparsec
from examples.models import SmallTransformer
from sparsec.frontends import trace
from sparsec.latency_model import register_latency_model
from sparsec.ops import SparsityPattern, recorded_masks
from sparsec.passes.rewrite import LowerSparseWeights, Sparsify
from sparsec.pipeline import AnalysisManager, PassManager, PassResult, Pipeline, VerifyEach


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 8),
    ).eval()


def _lower(
    model: torch.nn.Module, sparsify: Sparsify, lower: LowerSparseWeights
) -> tuple[sparsec.ir.Graph, PassResult]:
    graph = trace(model, (torch.randn(2, 32),))
    run = PassManager([sparsify, lower], instruments=[VerifyEach()]).run(
        graph, AnalysisManager(graph)
    )
    result = run.results[-1][1]
    assert result is not None
    return graph, result


@pytest.mark.parametrize(
    ("options", "op"),
    [
        ({"pattern": "unstructured", "sparsity": 0.7}, "sparsec.csr_linear.default"),
        ({"pattern": "nm", "n": 2, "m": 4}, "sparsec.nm_linear.default"),
        ({"pattern": "block", "block": (4, 4), "sparsity": 0.5}, "sparsec.bsr_linear.default"),
    ],
    ids=["csr", "nm", "bsr"],
)
def test_lowered_graph_equals_masked_dense(options: dict, op: str) -> None:
    model = _mlp()
    dense_graph, _ = _lower(
        model, Sparsify(**options), LowerSparseWeights(gate="off", format="csr")
    )
    graph, result = _lower(model, Sparsify(**options), LowerSparseWeights(gate="off"))
    assert result.changed and result.summary.lowered == 3
    targets = [str(n.target) for n in graph.module.graph.nodes if n.op == "call_function"]
    assert targets == [op, "aten.gelu.default", op, "aten.relu.default", op]
    assert "aten.linear" not in str(graph)
    # the dense weights are released and their masks dropped
    assert graph.tensor("0.weight").numel() == 0 and not recorded_masks(graph.module)
    assert result.summary.compressed_weight_bytes < result.summary.dense_weight_bytes
    masked = trace(model, (torch.randn(2, 32),))
    PassManager([Sparsify(**options)]).run(masked)
    for batch in (1, 5):
        x = torch.randn(batch, 32)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), masked(x), atol=1e-5, rtol=0)
            torch.testing.assert_close(dense_graph(x), masked(x), atol=1e-5, rtol=0)


def test_without_masks_nothing_is_lowered() -> None:
    graph = trace(_mlp(), (torch.randn(2, 32),))
    ((_, result),) = PassManager([LowerSparseWeights(gate="off")]).run(graph).results
    assert result is not None and not result.changed and graph.version == 0
    assert {row["reason"] for row in result.summary.layers} == {
        "no sparsity mask recorded (run sparsify first)"
    }


def test_format_must_fit_the_pattern() -> None:
    _, result = _lower(
        _mlp(), Sparsify(pattern="unstructured"), LowerSparseWeights(gate="off", format="nm")
    )
    assert not result.changed
    assert "does not fit" in result.summary.layers[0]["reason"]


def test_measured_gate_keeps_dense_at_low_sparsity() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256)).eval()
    graph = trace(model, (torch.randn(2, 256),))
    PassManager([Sparsify(sparsity=0.05), LowerSparseWeights(tokens=64)]).run(graph)
    assert [str(n.target) for n in graph.module.graph.nodes if n.op == "call_function"] == [
        "aten.linear.default"
    ]


class _FixedCost:
    """Sparse time proportional to density: sparse wins above 40% sparsity."""

    def dense_ms(self, out_features: int, in_features: int, tokens: int) -> float:
        return 0.6

    def sparse_ms(
        self, fmt: str, out_features: int, in_features: int, tokens: int, pattern: SparsityPattern
    ) -> float:
        return 1.0 - pattern.target_sparsity


def test_gate_follows_the_cost_model_and_says_why() -> None:
    register_latency_model("fixed-test", _FixedCost)
    model = _mlp()
    _, low = _lower(model, Sparsify(sparsity=0.3), LowerSparseWeights(cost_model="fixed-test"))
    assert not low.changed
    assert all("dense kept" in row["reason"] for row in low.summary.layers)
    _, high = _lower(model, Sparsify(sparsity=0.7), LowerSparseWeights(cost_model="fixed-test"))
    assert high.summary.lowered == 3
    assert all("2.00x faster" in row["reason"] for row in high.summary.layers)
    with pytest.raises(ValueError, match="unknown cost model"):
        LowerSparseWeights(cost_model="nope")


def _pipeline(**sparsify: object) -> Pipeline:
    return Pipeline([Sparsify(**sparsify), LowerSparseWeights(gate="off")], backend="onnxruntime")  # type: ignore[arg-type]


def test_compile_transformer_onnxruntime_matches_torch() -> None:
    torch.manual_seed(0)
    model = SmallTransformer(vocab=100, dim=32, heads=2, hidden=64, layers=1).eval()
    tokens = torch.randint(0, 100, (2, 16))
    compiled = sparsec.compile(
        model,
        (tokens,),
        pipeline=_pipeline(pattern="block", block=(16, 1), sparsity=0.8),
        backend="onnxruntime",
    )
    assert compiled.report.backend == "onnxruntime"
    ops = [str(n.target) for n in compiled.graph.module.graph.nodes if n.op == "call_function"]
    # qkv, proj, fc1, fc2 are lowered; the 4-class head is not a multiple of 16 rows: dense
    assert ops.count("sparsec.bsr_linear.default") == 4 and ops.count("aten.linear.default") == 1
    for batch, seq in ((1, 16), (3, 9)):
        x = torch.randint(0, 100, (batch, seq))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), compiled.module(x), atol=1e-5, rtol=1e-5)


def test_artifact_stores_compressed_weights(tmp_path: Path) -> None:
    model, x = _mlp(), torch.randn(3, 32)
    dense = sparsec.compile(model, (x,), pipeline=Pipeline([], backend="onnxruntime")).save(
        tmp_path / "dense"
    )
    sparse = sparsec.compile(
        model, (x,), pipeline=_pipeline(pattern="unstructured", sparsity=0.9)
    ).save(tmp_path / "sparse")
    assert (sparse / "weights.safetensors").stat().st_size < 0.5 * (
        dense / "weights.safetensors"
    ).stat().st_size
    loaded = sparsec.load(sparse)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), loaded.program(x), atol=1e-5, rtol=0)
    assert any("sparsec.csr_linear" in str(n.target) for n in loaded.program.graph.nodes)


# ---------------------------------------------------------------- conv layers
_CONV = ("linear", "conv")


@pytest.mark.parametrize(
    "options",
    [
        {"pattern": "unstructured", "sparsity": 0.7},
        {"pattern": "nm", "n": 2, "m": 4},
        {"pattern": "block", "block": (4, 4), "sparsity": 0.5},
    ],
    ids=["csr", "nm", "bsr"],
)
@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (lambda: torch.nn.Conv2d(16, 8, 1), (7, 5)),
        (lambda: torch.nn.Conv2d(16, 8, 1, bias=False), (1, 3)),
        (lambda: torch.nn.Conv1d(16, 8, 1), (9,)),
    ],
    ids=["conv2d 7x5", "conv2d 1x3 no bias", "conv1d 9"],
)
def test_pointwise_conv_lowered_equals_masked_dense(
    options: dict, conv: Callable[[], torch.nn.Module], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    second = torch.nn.Conv2d(8, 8, 1) if len(shape) == 2 else torch.nn.Conv1d(8, 8, 1)
    model = torch.nn.Sequential(conv(), second).eval()  # back to back: permute → permute
    example = (torch.randn(2, 16, *shape),)
    graph = trace(model, example)
    PassManager(
        [Sparsify(layers=_CONV, **options), LowerSparseWeights(gate="off")],
        instruments=[VerifyEach()],
    ).run(graph)
    ops = [str(n.target) for n in graph.module.graph.nodes if n.op == "call_function"]
    assert len(ops) == 6 and ops[0::3] == ops[2::3] == ["aten.permute.default"] * 2
    assert ops[1].startswith("sparsec.") and "conv" not in str(graph)
    masked = trace(model, example)
    PassManager([Sparsify(layers=_CONV, **options)]).run(masked)
    for batch in (1, 3):
        x = torch.randn(batch, 16, *shape)
        with torch.no_grad():
            y = graph(x)
            assert y.shape == model(x).shape
            torch.testing.assert_close(y, masked(x), atol=1e-5, rtol=0)


def test_other_convs_stay_dense_with_their_mask_and_say_why() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Conv2d(8, 8, 1, stride=2),
        torch.nn.Conv2d(8, 8, 1, padding=1),
        torch.nn.Conv2d(8, 8, 1, groups=2),
    ).eval()
    graph = trace(model, (torch.randn(2, 8, 6, 6),))
    PassManager([Sparsify(layers=_CONV)]).run(graph)
    masks = recorded_masks(graph.module)
    # pruned weights that came back (trained without preserve_masks) are zeroed again
    with graph.rewrite("test") as rw:
        rw.replace_tensor("0.weight", graph.tensor("0.weight") + 1.0)
    ((_, result),) = PassManager([LowerSparseWeights(gate="off")]).run(graph).results
    assert result is not None and result.changed and not result.summary.lowered
    assert [row["reason"] for row in result.summary.layers] == [
        "3×3 conv: no sparse conv kernel; kept dense with its mask",
        "1×1 conv with stride [2, 2], padding [(0, 0), (0, 0)]: not a linear over channels; "
        "kept dense with its mask",
        "1×1 conv with stride [1, 1], padding [(1, 1), (1, 1)]: not a linear over channels; "
        "kept dense with its mask",
        "grouped 1×1 conv (groups=2): no grouped sparse kernel; kept dense with its mask",
    ]
    assert torch.all(graph.tensor("0.weight")[~masks["0.weight"].mask] == 0)
    assert sorted(recorded_masks(graph.module)) == sorted(masks)  # kept for fine-tuning
    assert "conv2d" in str(graph) and "sparsec" not in str(graph)


def test_compile_cnn_onnxruntime_and_artifact_match_torch(tmp_path: Path) -> None:
    model, x = make_depthwise()  # stem 3×3 (3 channels), depthwise 3×3, pointwise 1×1, fc
    compiled = sparsec.compile(
        model,
        (x,),
        pipeline=Pipeline(
            [Sparsify(pattern="nm", layers=_CONV), LowerSparseWeights(gate="off")],
            backend="onnxruntime",
        ),
    )
    ops = [str(n.target) for n in compiled.graph.module.graph.nodes if n.op == "call_function"]
    # the pointwise conv and fc are lowered; the stem (3 channels) and depthwise (1 channel
    # per group) do not divide into groups of 4 channels and stay dense
    assert ops.count("sparsec.nm_linear.default") == 2 and ops.count("aten.conv2d.default") == 2
    for batch in (1, 3):
        inputs = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            expected = compiled.module(inputs)
            assert expected.shape == model(inputs).shape
            torch.testing.assert_close(compiled(inputs), expected, atol=1e-5, rtol=1e-5)
    loaded = sparsec.load(compiled.save(tmp_path / "cnn"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), loaded.program(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.program(x), compiled.module(x), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- Before / Expected IR
def test_tiny_mlp_nm_ir() -> None:
    """After 2:4 sparsify, each linear becomes sparsec::nm_linear reading the kept values and
    their column indices; the dense weights' reads go."""
    model, x = make_tiny_mlp()
    graph = trace(model, (x,))
    PassManager([Sparsify(pattern="nm", n=2, m=4)]).run(graph)
    masked = trace(model, (x,))
    PassManager([Sparsify(pattern="nm", n=2, m=4)]).run(masked)
    before = TINY_MLP_IR
    expected = """\
@fc1.bias: f32[4]
@fc2.bias: f32[2]
%x: f32[batch, 4] = input
@fc1_weight_values: f32[4, 2]
@fc1_weight_indices: u8[4, 2]
%nm_linear_default: f32[batch, 4] = nm_linear(%x, @fc1_weight_values, @fc1_weight_indices, \
@fc1.bias, 2, 4)
%relu: f32[batch, 4] = relu(%nm_linear_default)
@fc2_weight_values: f32[2, 2]
@fc2_weight_indices: u8[2, 2]
%nm_linear_default_1: f32[batch, 2] = nm_linear(%relu, @fc2_weight_values, @fc2_weight_indices, \
@fc2.bias, 2, 4)
return [%nm_linear_default_1]
"""
    assert str(graph) == before
    ((_, result),) = PassManager(
        [LowerSparseWeights(gate="off")], instruments=[VerifyEach()]
    ).run(graph).results
    assert str(graph) == expected
    assert result is not None and result.changed
    # each row keeps its two largest |w|: fc1 row 0 = [-0.004, 0.268, -0.412, -0.368]
    indices = {"fc1": [[2, 3], [0, 3], [1, 2], [0, 1]], "fc2": [[1, 3], [2, 3]]}
    for layer, kept in indices.items():
        assert graph.tensor(f"{layer}_weight_indices").tolist() == kept
        dense = model.get_parameter(f"{layer}.weight").detach()
        values = dense.gather(1, torch.tensor(kept))
        torch.testing.assert_close(graph.tensor(f"{layer}_weight_values"), values)
        assert graph.tensor(f"{layer}.weight").numel() == 0
    assert not recorded_masks(graph.module)
    for batch in (1, 5):
        inputs = torch.randn(batch, 4)
        with torch.no_grad():
            torch.testing.assert_close(graph(inputs), masked(inputs), atol=1e-6, rtol=0)
