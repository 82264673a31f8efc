"""The "tvm" cost model: registered with the break-even gate, measures every sparse format
through the kernels a TVM build runs, and drives `lower-sparse-weights{cost_model=tvm}`.

Timings are never asserted (the machine is shared); the structure of the answers is."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")

from sparsec.backends.tvm import TvmLatencyModel  # noqa: E402
from sparsec.frontends import trace  # noqa: E402
from sparsec.latency_model import LATENCY_MODELS, decide, get_latency_model  # noqa: E402
from sparsec.ops.masks import SparsityPattern  # noqa: E402
from sparsec.passes.rewrite import LowerSparseWeights, Sparsify  # noqa: E402
from sparsec.pipeline import AnalysisManager, PassManager  # noqa: E402

PATTERNS = [
    ("bsr", SparsityPattern("block", 0.9, block=(16, 1))),
    ("bsr", SparsityPattern("block", 0.5, block=(4, 1))),
    ("csr", SparsityPattern("unstructured", 0.9)),
    ("nm", SparsityPattern("nm", n=2, m=4)),
]


@pytest.fixture(scope="module")
def model() -> TvmLatencyModel:
    return TvmLatencyModel(repeats=2)


def test_the_backend_registry_names_it() -> None:
    """Registered by name through the tvm backend's registry entry, resolved on first use."""
    assert get_latency_model("tvm") is TvmLatencyModel
    assert LATENCY_MODELS["tvm"] is TvmLatencyModel


@pytest.mark.parametrize(("fmt", "pattern"), PATTERNS, ids=[str(p) for _, p in PATTERNS])
def test_measures_each_format(model: TvmLatencyModel, fmt: str, pattern: SparsityPattern) -> None:
    sparse = model.sparse_ms(fmt, 64, 32, 16, pattern)  # type: ignore[arg-type]
    assert 0 < sparse < 1e3
    assert model.sparse_ms(fmt, 64, 32, 16, pattern) == sparse  # type: ignore[arg-type]  # cached


def test_decision_says_why(model: TvmLatencyModel) -> None:
    decision = decide(
        model, "fc.weight", "bsr", (64, 32), SparsityPattern("block", 0.9, block=(16, 1)), tokens=16
    )
    assert decision.dense_ms is not None and decision.dense_ms > 0
    assert "at 90% sparsity, 16 tokens" in decision.reason
    assert decision.reason.endswith(("faster", "dense kept"))


def test_lower_sparse_weights_gates_with_it() -> None:
    """Each layer's decision names the measured TVM and dense times; whichever way it goes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    graph = trace(model.eval(), (torch.randn(2, 64),))
    passes = [
        Sparsify(pattern="block", block=(16, 1), sparsity=0.9),
        LowerSparseWeights(cost_model="tvm", tokens=32),
    ]
    run = PassManager(passes).run(graph, AnalysisManager(graph))
    result = run.results[-1][1]
    assert result is not None
    rows = result.summary.layers
    assert len(rows) == 2
    for row in rows:
        assert row["format"] in ("bsr", "dense")
        assert "bsr " in row["reason"] and "ms vs dense" in row["reason"], row
        assert row["sparse_ms"] > 0 and row["dense_ms"] > 0


def test_a_second_model_reads_the_first_ones_measurements() -> None:
    """The gate's figures persist per host and kernel version: a rebuild decides the same way
    without measuring (and without compiling kernels) again."""
    pattern = SparsityPattern("block", 0.8, block=(8, 1))
    first = TvmLatencyModel(repeats=2)
    sparse, dense = first.sparse_ms("bsr", 96, 48, 8, pattern), first.dense_ms(96, 48, 8)
    second = TvmLatencyModel(repeats=2)
    assert second.sparse_ms("bsr", 96, 48, 8, pattern) == sparse
    assert second.dense_ms(96, 48, 8) == dense
    assert not second._kernels  # nothing was compiled to answer


@pytest.mark.parametrize(("backend", "expected"), [("tvm", "tvm"), ("onnxruntime", "reference")])
def test_auto_gate_measures_the_kernels_that_will_run(backend: str, expected: str) -> None:
    import sparsec

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    compiled = sparsec.compile(
        model.eval(), (torch.randn(4, 64),), pipeline="block-90", backend=backend
    )
    assert f"cost_model={expected}" in compiled.report.pipeline
    assert "cost_model=auto" not in compiled.report.pipeline


def test_gate_latency_model_follows_the_backend() -> None:
    from sparsec.backends.base import gate_latency_model

    assert gate_latency_model("cpu", "tvm") == "tvm"
    assert gate_latency_model("cpu", None) == "tvm"  # default_backend picks tvm for sparse ops
    assert gate_latency_model("cpu", "onnxruntime") == "reference"
    assert gate_latency_model("cuda", "tvm") == "reference"
