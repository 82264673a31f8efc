"""sparsec.ops: masks meet patterns, sparse ops equal masked dense, export to .pt2 and ONNX."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsec.ops import (
    SparsityPattern,
    check_mask,
    from_bsr,
    from_nm,
    from_weight_matrix,
    mask_from_scores,
    to_bsr,
    to_csr,
    to_nm,
    weight_matrix,
)
from sparsec.ops.onnx import ONNX_TRANSLATIONS

ops = torch.ops.sparsec


# ---------------------------------------------------------------- masks
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 6),
    n_m=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 8)]),
    seed=st.integers(0, 2**16),
)
def test_nm_mask_keeps_exactly_n_of_every_m(
    rows: int, groups: int, n_m: tuple[int, int], seed: int
) -> None:
    n, m = n_m
    scores = torch.rand(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    pattern = SparsityPattern("nm", n=n, m=m)
    mask = mask_from_scores(scores, pattern)
    assert check_mask(mask, pattern) is None
    assert torch.all(mask.reshape(rows, groups, m).sum(-1) == n)
    # the kept ones are the top-n scores of their group
    kept_min = torch.where(mask, scores, torch.inf).reshape(rows, groups, m).amin(-1)
    dropped_max = torch.where(mask, -torch.inf, scores).reshape(rows, groups, m).amax(-1)
    assert torch.all(kept_min >= dropped_max)


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 4),
    c=st.integers(1, 4),
    block_rows=st.integers(1, 5),
    block_cols=st.integers(1, 5),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_block_mask_is_whole_blocks_with_exact_count(
    r: int, c: int, block_rows: int, block_cols: int, sparsity: float, seed: int
) -> None:
    scores = torch.rand(
        block_rows * r, block_cols * c, generator=torch.Generator().manual_seed(seed)
    )
    pattern = SparsityPattern("block", sparsity, block=(r, c))
    mask = mask_from_scores(scores, pattern)
    assert check_mask(mask, pattern) is None
    blocks = mask.reshape(block_rows, r, block_cols, c).sum((1, 3))
    assert torch.all((blocks == 0) | (blocks == r * c))
    assert int((blocks == 0).sum()) == round(sparsity * block_rows * block_cols)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    sparsity=st.floats(0.0, 0.99),
    per_row=st.booleans(),
)
def test_unstructured_mask_prunes_exact_count(
    rows: int, cols: int, sparsity: float, per_row: bool
) -> None:
    scores = torch.rand(rows, cols, generator=torch.Generator().manual_seed(rows * 31 + cols))
    mask = mask_from_scores(scores, SparsityPattern("unstructured", sparsity), per_row=per_row)
    expected = rows * round(sparsity * cols) if per_row else round(sparsity * rows * cols)
    assert int((~mask).sum()) == expected


def test_check_mask_names_the_violation() -> None:
    mask = torch.ones(2, 8, dtype=torch.bool)
    assert "row 0, group 0" in str(check_mask(mask, SparsityPattern("nm", n=2, m=4)))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    assert "partly kept" in str(check_mask(mask, SparsityPattern("block", block=(2, 2))))


@pytest.mark.parametrize(
    ("pattern", "shape"),
    [
        (SparsityPattern("nm", n=2, m=4), (8, 10)),
        (SparsityPattern("block", block=(4, 1)), (10, 8)),
        (SparsityPattern("block", block=(1, 4)), (8, 6)),
    ],
)
def test_ragged_shapes_are_refused_with_the_reason(
    pattern: SparsityPattern, shape: tuple[int, int]
) -> None:
    assert "multiple" in str(pattern.refusal(shape))
    with pytest.raises(ValueError, match="multiple"):
        mask_from_scores(torch.rand(shape), pattern)


def test_conv_weight_matrix_puts_input_channels_innermost() -> None:
    weight = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)  # [out, in, kh, kw]
    matrix = weight_matrix(weight)
    # column (i·kw + j)·in + c holds weight[:, c, i, j]
    assert matrix.shape == (2, 12) and matrix[1, (1 * 2 + 0) * 3 + 2] == weight[1, 2, 1, 0]
    assert torch.equal(from_weight_matrix(matrix, weight.shape), weight)
    assert weight_matrix(matrix) is matrix  # a linear weight is its own matrix


def test_conv_masks_group_input_channels_of_one_kernel_position() -> None:
    pattern = SparsityPattern("nm", n=2, m=4)
    mask = mask_from_scores(torch.rand(6, 8, 3, 3), pattern)
    assert mask.shape == (6, 8, 3, 3) and check_mask(mask, pattern) is None
    assert torch.all(mask.permute(0, 2, 3, 1).reshape(6, 3, 3, 2, 4).sum(-1) == 2)
    # 12 columns divide by 4, but a group of 4 would span two kernel positions
    assert "2 input channels is not a multiple of m=4" in str(pattern.refusal((6, 2, 3, 2)))
    block = SparsityPattern("block", block=(4, 2))
    assert "3 output channels per group" in str(block.refusal((6, 4, 3, 3), groups=2))
    assert block.refusal((8, 4, 3, 3), groups=2) is None


# ---------------------------------------------------------------- ops equal masked dense
def _masked(
    shape: tuple[int, int], pattern: SparsityPattern, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen)
    mask = mask_from_scores(torch.rand(shape, generator=gen), pattern)
    return weight * mask, mask


_SHAPES = [(1, 4), (8, 12), (24, 20), (48, 36)]
_LEADING = [(1,), (2, 5)]


@pytest.mark.parametrize("shape", _SHAPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("lead", _LEADING)
def test_csr_linear_equals_masked_dense(
    shape: tuple[int, int], sparsity: float, lead: tuple[int, ...]
) -> None:
    weight, mask = _masked(
        shape, SparsityPattern("unstructured", min(sparsity, 0.999) if sparsity < 1 else 1.0), 1
    )
    x, bias = torch.randn(*lead, shape[1]), torch.randn(shape[0])
    values, cols, crow = to_csr(weight, mask)
    expected = torch.nn.functional.linear(x, weight, bias)
    torch.testing.assert_close(
        ops.csr_linear(x, values, cols, crow, bias, *shape), expected, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        ops.csr_linear(x, values, cols, crow, None, *shape), expected - bias, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("block", [(1, 1), (4, 1), (1, 4), (2, 3), (4, 4)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("lead", _LEADING)
def test_bsr_linear_equals_masked_dense(
    block: tuple[int, int], sparsity: float, lead: tuple[int, ...]
) -> None:
    r, c = block
    shape = (r * 6, c * 5)
    pattern = SparsityPattern("block", sparsity, block=block)
    weight, mask = _masked(shape, pattern, 2)
    values, cols, crow = to_bsr(weight, block, mask)
    assert torch.equal(from_bsr(values, cols, crow, shape), weight)
    x, bias = torch.randn(*lead, shape[1]), torch.randn(shape[0])
    torch.testing.assert_close(
        ops.bsr_linear(x, values, cols, crow, bias, *shape),
        torch.nn.functional.linear(x, weight, bias),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("n_m", [(1, 2), (2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("lead", _LEADING)
def test_nm_linear_equals_masked_dense(
    n_m: tuple[int, int], rows: int, lead: tuple[int, ...]
) -> None:
    n, m = n_m
    shape = (rows, 3 * m)
    weight, mask = _masked(shape, SparsityPattern("nm", n=n, m=m), 3)
    weight[0, :m] = 0.0  # a group with fewer than n non-zeros stores zeros in spare slots
    values, indices = to_nm(weight, n, m)
    assert values.shape == (rows, 3 * n) and indices.dtype == torch.uint8
    assert torch.equal(from_nm(values, indices, n, m), weight)
    x, bias = torch.randn(*lead, shape[1]), torch.randn(rows)
    torch.testing.assert_close(
        ops.nm_linear(x, values, indices, bias, n, m),
        torch.nn.functional.linear(x, weight, bias),
        atol=1e-5,
        rtol=0,
    )


def test_to_nm_refuses_a_weight_that_breaks_the_pattern() -> None:
    with pytest.raises(ValueError, match="keeps 3 weights > n=2"):
        to_nm(torch.ones(1, 4).index_fill(1, torch.tensor([3]), 0.0), 2, 4)


# ---------------------------------------------------------------- export
class _Sparse(torch.nn.Module):
    """One of each op over the same input."""

    def __init__(self) -> None:
        super().__init__()
        w, mask = _masked((12, 8), SparsityPattern("block", 0.5, block=(3, 2)), 4)
        for name, t in zip(("bv", "bc", "br"), to_bsr(w, (3, 2), mask), strict=True):
            self.register_buffer(name, t)
        w, mask = _masked((12, 8), SparsityPattern("unstructured", 0.7), 5)
        for name, t in zip(("cv", "cc", "cr"), to_csr(w, mask), strict=True):
            self.register_buffer(name, t)
        w, mask = _masked((12, 8), SparsityPattern("nm", n=1, m=4), 6)
        for name, t in zip(("nv", "ni"), to_nm(w, 1, 4, mask), strict=True):
            self.register_buffer(name, t)
        self.bias = torch.nn.Parameter(torch.randn(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.bsr_linear(x, self.bv, self.bc, self.br, self.bias, 12, 8)
        y = y + ops.csr_linear(x, self.cv, self.cc, self.cr, None, 12, 8)
        return y + ops.nm_linear(x, self.nv, self.ni, self.bias, 1, 4)


def _export() -> tuple[torch.nn.Module, torch.export.ExportedProgram]:
    model = _Sparse()
    program = torch.export.export(
        model,
        (torch.randn(3, 5, 8),),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        strict=False,
    )
    return model, program


def test_pt2_round_trip(tmp_path: Path) -> None:
    model, program = _export()
    torch.export.save(program, tmp_path / "sparse.pt2")
    loaded = torch.export.load(tmp_path / "sparse.pt2").module()
    x = torch.randn(4, 5, 8)
    torch.testing.assert_close(loaded(x), model(x))
    assert {
        "sparsec.bsr_linear.default",
        "sparsec.csr_linear.default",
        "sparsec.nm_linear.default",
    } <= {str(n.target) for n in loaded.graph.nodes}


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path) -> None:
    model, program = _export()
    onnx_program = torch.onnx.export(
        program, (), dynamo=True, custom_translation_table=ONNX_TRANSLATIONS
    )
    assert onnx_program is not None
    onnx_program.save(tmp_path / "sparse.onnx")
    session = ort.InferenceSession(str(tmp_path / "sparse.onnx"))
    for batch in (1, 7):
        x = torch.randn(batch, 5, 8)
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), atol=1e-5, rtol=0)
