"""`sparsec.compile(..., backend="tvm")` end to end with sparsec's real sparse ops.

The pipeline sparsifies a tiny model and lowers its linears to `torch.ops.sparsec.*`; the
TVM build must run those ops with our kernels (not torch's reference kernels), match the
pruned torch program (fp32, atol 1e-4) on inputs other than the example, and round-trip
through `compiled.save` / `sparsec.load`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("tvm")

import sparsec  # noqa: E402
from sparsec.backends.tvm.partitioned import (  # noqa: E402
    KERNELS_FILE,
    PartitionedExecutable,
    sparse_nodes,
)

ATOL = 1e-4


class TinyMlp(nn.Module):
    """Two sparsifiable linears around a GELU, and a head too narrow for 16×1 blocks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.down(nn.functional.gelu(self.up(x)))))


def _pipeline(pattern: str) -> str:
    return f"sparsify{{{pattern},sparsity=0.75}},lower-sparse-weights{{gate=off}}"


# (pattern options, the op it lowers to, how many linears: 16×1 blocks do not tile the head)
PATTERNS = [
    ("pattern=block,block=[16,1]", "sparsec.bsr_linear.default", 2),
    ("pattern=block,block=[4,1]", "sparsec.bsr_linear.default", 3),
    ("pattern=unstructured", "sparsec.csr_linear.default", 3),
]


@pytest.fixture(scope="module", params=PATTERNS, ids=[p[0] for p in PATTERNS])
def compiled(request):  # type: ignore[no-untyped-def]
    pattern, op, count = request.param
    model = TinyMlp().eval()
    compiled = sparsec.compile(
        model, (torch.randn(2, 16, 64),), pipeline=_pipeline(pattern), backend="tvm"
    )
    return compiled, op, count


def test_the_real_sparse_ops_run_as_tvm_kernels(compiled) -> None:  # type: ignore[no-untyped-def]
    compiled, op, count = compiled
    nodes = sparse_nodes(compiled.graph.module)
    assert [str(node.target) for node in nodes] == [op] * count
    assert isinstance(compiled.executable, PartitionedExecutable)


@pytest.mark.parametrize("shape", [(2, 16, 64), (1, 16, 64), (5, 16, 64)])  # batch is dynamic
def test_matches_the_pruned_torch_program(compiled, shape: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    compiled, _, _ = compiled
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = compiled.module(x)
    actual = compiled(x)
    assert torch.allclose(actual, expected, atol=ATOL), (actual - expected).abs().max()


def test_artifact_round_trip(compiled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    compiled, _, _ = compiled
    x = torch.randn(3, 16, 64)
    directory = compiled.save(tmp_path / "artifact")
    assert (directory / KERNELS_FILE).is_file()
    loaded = sparsec.load(directory)
    assert isinstance(loaded.executable, PartitionedExecutable)
    assert torch.allclose(loaded(x), compiled(x), atol=ATOL)


def test_a_backend_object_carries_its_options_through_compile() -> None:
    from sparsec.backends.tvm import TvmBackend, TvmMode, TvmOptions
    from sparsec.backends.tvm.relax_executable import RelaxExecutable

    backend = TvmBackend(TvmOptions(mode=TvmMode.RELAX))
    compiled = sparsec.compile(
        TinyMlp().eval(),
        (torch.randn(2, 16, 64),),
        pipeline=_pipeline("pattern=block,block=[16,1]"),
        backend=backend,
    )
    assert isinstance(compiled.executable, RelaxExecutable)
    assert "given to compile()" in compiled.report.backend_reason
    x = torch.randn(3, 16, 64)
    with torch.no_grad():
        assert torch.allclose(compiled(x), compiled.module(x), atol=ATOL)


def test_a_backend_that_is_neither_name_nor_backend_is_refused() -> None:
    with pytest.raises(sparsec.errors.ConfigError, match="name or a Backend object"):
        sparsec.compile(TinyMlp(), pipeline="none", backend=object())  # type: ignore[arg-type]


def test_dense_ops_run_on_dense_threads(tmp_path: Path) -> None:
    from sparsec.backends.tvm import TvmBackend, TvmOptions

    seen: list[int] = []
    compiled = sparsec.compile(
        TinyMlp().eval(),
        (torch.randn(2, 16, 64),),
        pipeline=_pipeline("pattern=block,block=[16,1]"),
        backend=TvmBackend(TvmOptions(dense_threads=1)),
        threads=2,
    )
    module = compiled.executable._module  # the rewired program torch runs
    module.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    compiled(torch.randn(1, 16, 64))
    assert seen == [1]
    manifest = (compiled.save(tmp_path / "a") / "manifest.json").read_text()
    assert '"dense_threads": 1' in manifest
    with pytest.raises(sparsec.errors.BackendError, match="dense_threads"):
        TvmOptions(dense_threads=0)
