"""The tvm backend: a block-sparse encoder compiles for cpu (partitioned and whole-program
Relax) and matches torch; artifacts round-trip; a foreign build refuses to load; the cuda
build embeds device code (not executed: no GPU here)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tvm")

import tvm  # noqa: E402

import sparsec  # noqa: E402
from sparsec.artifact import read_artifact, write_artifact  # noqa: E402
from sparsec.backends.base import BackendOptions, Severity, get_backend  # noqa: E402
from sparsec.backends.tvm import TvmBackend, TvmMode, TvmOptions  # noqa: E402
from sparsec.backends.tvm.isa import AVX512, isa_of, missing_here  # noqa: E402
from sparsec.backends.tvm.target import check_loadable, host_cpu, host_target  # noqa: E402
from sparsec.errors import ArtifactError, BackendError  # noqa: E402
from sparsec.frontends import trace  # noqa: E402

ATOL = 1e-4

# A stand-in for sparsec's sparse ops (sparsec/ops), with the same schema and semantics; the
# backend matches ops by name, as TVM's importer does, so the real ones lower the same way.
_NS = "sparsec_tvmtest"
if not hasattr(torch.ops, _NS) or not hasattr(getattr(torch.ops, _NS), "bsr_linear"):
    torch.library.define(
        f"{_NS}::bsr_linear",
        "(Tensor x, Tensor values, Tensor col_indices, Tensor crow_indices, Tensor? bias, "
        "int out_features, int in_features) -> Tensor",
    )
    torch.library.define(
        f"{_NS}::nm_linear",
        "(Tensor x, Tensor values, Tensor indices, Tensor? bias, int n, int m) -> Tensor",
    )

    @torch.library.impl(f"{_NS}::bsr_linear", "CompositeExplicitAutograd")
    def _bsr_linear(x, values, cols, crow, bias, out_features, in_features):  # type: ignore[no-untyped-def]
        _, r, c = values.shape
        dense = torch.zeros(out_features // r, r, in_features // c, c, dtype=values.dtype)
        rows = torch.repeat_interleave(torch.arange(out_features // r), crow.diff())
        dense[rows, :, cols, :] = values
        y = x @ dense.reshape(out_features, in_features).T
        return y if bias is None else y + bias

    @torch.library.impl(f"{_NS}::nm_linear", "CompositeExplicitAutograd")
    def _nm_linear(x, values, indices, bias, n, m):  # type: ignore[no-untyped-def]
        dense = torch.zeros(values.shape[0], values.shape[1] * m // n, dtype=values.dtype)
        cols = torch.arange(values.shape[1]) // n * m + indices.to(torch.int64)
        dense.scatter_(1, cols, values)
        y = x @ dense.T
        return y if bias is None else y + bias

    @torch.library.register_fake(f"{_NS}::bsr_linear")
    def _bsr_fake(x, values, cols, crow, bias, out_features, in_features):  # type: ignore[no-untyped-def]
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake(f"{_NS}::nm_linear")
    def _nm_fake(x, values, indices, bias, n, m):  # type: ignore[no-untyped-def]
        return x.new_empty((*x.shape[:-1], values.shape[0]))


class BlockSparseLinear(nn.Module):
    """A linear whose weight keeps the largest-norm r×c blocks (a fraction 1 - sparsity)."""

    def __init__(self, dense: nn.Linear, r: int, c: int, sparsity: float) -> None:
        super().__init__()
        out_f, in_f = dense.weight.shape
        blocks = dense.weight.detach().reshape(out_f // r, r, in_f // c, c).permute(0, 2, 1, 3)
        norms = blocks.flatten(2).norm(dim=2)
        keep = norms >= norms.flatten().quantile(sparsity) if sparsity < 1 else norms < 0
        rows, cols = keep.nonzero(as_tuple=True)
        self.register_buffer("values", blocks[rows, cols].contiguous())
        self.register_buffer("cols", cols.to(torch.int64))
        crow = torch.zeros(out_f // r + 1, dtype=torch.int64)
        crow[1:] = keep.sum(1).cumsum(0)
        self.register_buffer("crow", crow)
        self.bias = nn.Parameter(dense.bias.detach().clone())
        self.shape = (out_f, in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = getattr(torch.ops, _NS).bsr_linear
        return op(x, self.values, self.cols, self.crow, self.bias, *self.shape)


class NMLinear(nn.Module):
    """A 2:4 linear: the 2 largest of every 4 input weights, positions within the group."""

    def __init__(self, dense: nn.Linear) -> None:
        super().__init__()
        out_f, in_f = dense.weight.shape
        groups = dense.weight.detach().reshape(out_f, in_f // 4, 4)
        top = groups.abs().topk(2, dim=2).indices.sort(dim=2).values
        self.register_buffer("values", groups.gather(2, top).reshape(out_f, -1).contiguous())
        self.register_buffer("indices", top.reshape(out_f, -1).to(torch.uint8).contiguous())
        self.bias = nn.Parameter(dense.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(torch.ops, _NS).nm_linear(x, self.values, self.indices, self.bias, 2, 4)


class TinyEncoder(nn.Module):
    """One BERT-style layer (hidden 64, 4 heads, FFN 128) with block-sparse projections."""

    def __init__(self, sparsity: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        hidden, ffn = 64, 128
        self.qkv = BlockSparseLinear(nn.Linear(hidden, 3 * hidden), 16, 1, sparsity)
        self.proj = BlockSparseLinear(nn.Linear(hidden, hidden), 4, 1, sparsity)
        self.up = BlockSparseLinear(nn.Linear(hidden, ffn), 1, 1, sparsity)
        self.down = NMLinear(nn.Linear(ffn, hidden))
        self.head = nn.Linear(hidden, 3)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, 4, h // 4).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h // 4), dim=-1) @ v
        x = self.norm1(x + self.proj(attention.transpose(1, 2).reshape(b, s, h)))
        x = self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))
        return self.head(x)


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return trace(TinyEncoder().eval(), (torch.randn(2, 8, 64),))


def _check(executable, model, batch: int, seq: int) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(batch, seq, 64)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(executable(x), expected, atol=ATOL), (
        (executable(x) - expected).abs().max()
    )


@pytest.fixture(scope="module")
def partitioned(graph):  # type: ignore[no-untyped-def]
    return TvmBackend().lower(graph, "cpu", BackendOptions(threads=2))


@pytest.fixture(scope="module")
def relax_build(graph):  # type: ignore[no-untyped-def]
    return TvmBackend(TvmOptions(mode=TvmMode.RELAX)).lower(graph, "cpu", BackendOptions(threads=1))


def test_registered_and_checks(graph) -> None:  # type: ignore[no-untyped-def]
    backend = get_backend("tvm")
    assert backend.name == "tvm" and backend.supports("cpu") and backend.supports("cuda")
    assert not [d for d in backend.check(graph) if d.severity is Severity.ERROR]
    dense = trace(nn.Linear(4, 4), (torch.randn(2, 4),))
    assert [d.severity for d in backend.check(dense)] == [Severity.WARNING]
    # asked for by name, it builds: ONNX Runtime runs the dense program (not untuned Relax)
    built = backend.lower(dense, "cpu", BackendOptions(threads=1))
    assert any("no sparse linear ops" in note and "ONNX Runtime" in note for note in built.notes)
    x = torch.randn(3, 4)
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(built(x))), dense.module(x), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(BackendError, match="no target"):
        backend.lower(graph, "tpu", BackendOptions())


@pytest.mark.parametrize(("batch", "seq"), [(1, 8), (3, 8), (5, 8)])
def test_partitioned_matches_torch(graph, partitioned, batch: int, seq: int) -> None:  # type: ignore[no-untyped-def]
    _check(partitioned, graph.module, batch, seq)


@pytest.mark.parametrize(("batch", "seq"), [(1, 8), (3, 8)])
def test_relax_matches_torch(graph, relax_build, batch: int, seq: int) -> None:  # type: ignore[no-untyped-def]
    _check(relax_build, graph.module, batch, seq)


class WideSparse(nn.Module):
    """Sparse linears over 320 input features, two 256-feature slabs of the TOKEN kernel: an
    unstructured → ReLU → 2:4 chain and a lone 4×1 linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.up = BlockSparseLinear(nn.Linear(320, 320), 1, 1, 0.7)
        self.down = NMLinear(nn.Linear(320, 48))
        self.side = BlockSparseLinear(nn.Linear(320, 48), 4, 1, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x))) + self.side(x)


@pytest.mark.parametrize("mode", [TvmMode.PARTITIONED, TvmMode.RELAX])
def test_weights_over_several_slabs_match_torch(mode: TvmMode) -> None:
    """The weights reach the kernels slab-major through the importer and the partitioned path."""
    model = WideSparse().eval()
    graph = trace(model, (torch.randn(2, 5, 320),))
    executable = TvmBackend(TvmOptions(mode=mode)).lower(graph, "cpu", BackendOptions(threads=2))
    for batch in (1, 13):  # 5 tokens (a tail), 65 (a whole 64-token tile and a tail)
        x = torch.randn(batch, 5, 320)
        with torch.no_grad():
            expected = model(x)
        assert torch.allclose(executable(x), expected, atol=ATOL), (
            (executable(x) - expected).abs().max()
        )


class ComputedWeights(BlockSparseLinear):
    """A block-sparse linear whose values are computed in the graph, not a module constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = getattr(torch.ops, _NS).bsr_linear
        return op(x, self.values * 2.0, self.cols, self.crow, self.bias, *self.shape)


def test_relax_refuses_computed_weight_arrays() -> None:
    model = ComputedWeights(nn.Linear(32, 32), 1, 1, 0.5).eval()
    graph = trace(model, (torch.randn(2, 32),))
    backend = TvmBackend(TvmOptions(mode=TvmMode.RELAX))
    with pytest.raises(BackendError, match="is computed or an input.*parameters or buffers"):
        backend.lower(graph, "cpu", BackendOptions(threads=1))


def test_relax_calls_our_kernels(graph) -> None:  # type: ignore[no-untyped-def]
    from sparsec.backends.tvm.importer import import_graph, kernel_for
    from sparsec.backends.tvm.kernels import BsrShape
    from sparsec.backends.tvm.target import build_target

    target = build_target("cpu", 1)
    imported = import_graph(graph.export_program(), target)
    names = {gv.name_hint for gv in imported.module.get_global_vars()}
    shapes = [
        BsrShape(192, 64, 16, 1),
        BsrShape(64, 64, 4, 1),
        BsrShape(128, 64, 1, 1),
        BsrShape(64, 128, 1, 1),
    ]
    expected = {kernel_for(shape, target)[0] for shape in shapes}
    assert {name for name in names if name.startswith("sparse_linear_")} == expected
    # weights are parameters of main after the one user input, not constants in the code
    assert imported.num_inputs == 1 and len(imported.params) >= 8


@pytest.mark.parametrize("mode", [TvmMode.PARTITIONED, TvmMode.RELAX])
def test_artifact_round_trip(
    graph, partitioned, relax_build, tmp_path: Path, mode: TvmMode
) -> None:  # type: ignore[no-untyped-def]
    executable = partitioned if mode is TvmMode.PARTITIONED else relax_build
    directory = write_artifact(
        tmp_path / "model",
        graph=graph,
        executable=executable,
        backend_name="tvm",
        target="cpu",
        pipeline={},
        report_markdown="",
        report={},
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    record = manifest["backend_metadata"]["target"]
    assert record["mcpu"] == host_cpu() and record["sparsec_target"] == "cpu"
    library = next(directory.glob("tvm_*.so"))
    if mode is TvmMode.RELAX:  # weights live beside the library, not in it
        assert (directory / "tvm_params.safetensors").stat().st_size > library.stat().st_size / 4
    loaded = read_artifact(directory)
    _check(loaded, graph.module, 3, 8)


def test_foreign_build_refuses_to_load(graph, partitioned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metadata = partitioned.save(tmp_path)
    record = dict(metadata["target"])
    with pytest.raises(ArtifactError, match="built for target 'cpu', not 'cuda'"):
        check_loadable(record, requested="cuda")
    foreign = {**metadata, "target": {**record, "triple": "aarch64-unknown-linux-gnu"}}
    with pytest.raises(ArtifactError, match="aarch64"):
        TvmBackend().load(tmp_path, foreign)
    cuda = {**metadata, "target": {**record, "kind": "cuda", "arch": "sm_80"}}
    if not tvm.cuda(0).exist:
        with pytest.raises(ArtifactError, match="no CUDA device"):
            TvmBackend().load(tmp_path, cuda)


def test_build_records_its_isa_and_another_isa_refuses_to_load(partitioned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metadata = partitioned.save(tmp_path)
    assert metadata["target"]["isa"] == isa_of(host_target()).name
    if not missing_here(AVX512):
        pytest.skip("this host runs every ISA sparsec builds for (it has AVX-512)")
    foreign = {**metadata, "target": {**metadata["target"], "isa": "avx512"}}
    with pytest.raises(ArtifactError, match="kernels for avx512.*Fix: rebuild"):
        TvmBackend().load(tmp_path, foreign)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_build_embeds_device_code(graph, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    executable = TvmBackend().lower(graph, "cuda", BackendOptions())
    from sparsec.backends.tvm.cuda_build import DEVICE_FILE, device_source

    assert "__global__" in device_source(executable.library)
    assert executable.device_code  # nvcc's fatbin of that source
    metadata = executable.save(tmp_path)
    assert metadata["target"]["kind"] == "cuda" and metadata["target"]["arch"] == "sm_80"
    assert (tmp_path / DEVICE_FILE).read_bytes() == executable.device_code
    if not tvm.cuda(0).exist:
        assert any("no CUDA device" in note for note in executable.notes)
        with pytest.raises(BackendError, match="no such device"):
            executable(torch.randn(1, 8, 64))


def test_dense_build_round_trips_through_the_tvm_backend(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    compiled = sparsec.compile(model, (x,), pipeline="none", backend="tvm")
    assert compiled.report.backend == "tvm"
    compiled.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["backend_metadata"]["mode"] == "dense"
    assert manifest["backend_metadata"]["backend"] == "onnxruntime"
    loaded = sparsec.load(tmp_path / "art")
    with torch.no_grad():
        torch.testing.assert_close(
            torch.as_tensor(np.asarray(loaded(x))), model(x), atol=1e-5, rtol=1e-5
        )
