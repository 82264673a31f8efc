"""SparseFormat classes: each format's op, compression, ONNX form and kernel operands agree."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from sparsec.ops import from_bsr
from sparsec.ops.masks import SparsityPattern, mask_from_scores
from sparsec.ops.onnx import ONNX_TRANSLATIONS
from sparsec.ops.sparse_formats import FORMATS, SparseFormat, format_of, natural_format

PATTERNS = {
    "csr": SparsityPattern("unstructured", 0.8),
    "bsr": SparsityPattern("block", 0.75, block=(4, 2)),
    "nm": SparsityPattern("nm", n=2, m=4),
}


def _layer(pattern: SparsityPattern) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 24, generator=generator)
    mask = mask_from_scores(torch.rand(weight.shape, generator=generator), pattern)
    return weight, mask, torch.randn(5, 24, generator=generator)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_op_of_the_compressed_weight_is_the_masked_dense_linear(name: str) -> None:
    fmt, pattern = FORMATS[name], PATTERNS[name]
    weight, mask, x = _layer(pattern)
    bias = torch.randn(16)
    arrays = fmt.compress(weight, mask, pattern)
    assert len(arrays) == len(fmt.parts)
    y = fmt.op(*fmt.call_args(x, arrays, bias, (16, 24), pattern))
    torch.testing.assert_close(y, torch.nn.functional.linear(x, weight * mask, bias))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_decompress_inverts_compress(name: str) -> None:
    fmt, pattern = FORMATS[name], PATTERNS[name]
    weight, mask, _ = _layer(pattern)
    dense = fmt.decompress(fmt.compress(weight, mask, pattern), (16, 24), pattern)
    assert torch.equal(dense, weight * mask)


class _OneLayer(torch.nn.Module):
    def __init__(self, fmt: SparseFormat, pattern: SparsityPattern) -> None:
        super().__init__()
        self.fmt, self.pattern = fmt, pattern
        weight, mask, _ = _layer(pattern)
        self.parts = fmt.parts
        for part, array in zip(fmt.parts, fmt.compress(weight, mask, pattern), strict=True):
            self.register_buffer(part, array)
        self.bias = torch.nn.Parameter(torch.randn(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arrays = [getattr(self, part) for part in self.parts]
        return self.fmt.op(*self.fmt.call_args(x, arrays, self.bias, (16, 24), self.pattern))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_onnx_translation_runs_in_onnxruntime(name: str, tmp_path: Path) -> None:
    """The exported graph (not constant-folded) rebuilds the weight: ORT equals the op."""
    fmt, pattern = FORMATS[name], PATTERNS[name]
    assert ONNX_TRANSLATIONS[fmt.op] is fmt.onnx_translation
    model = _OneLayer(fmt, pattern)
    program = torch.export.export(
        model, (torch.randn(3, 24),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    onnx_program = torch.onnx.export(
        program, (), dynamo=True, optimize=False, custom_translation_table=ONNX_TRANSLATIONS
    )
    assert onnx_program is not None
    onnx_program.save(tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"))
    for batch in (1, 7):
        x = torch.randn(batch, 24)
        (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(y), model(x).detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_static_call_and_kernel_operands_rebuild_the_weight(name: str) -> None:
    """What the TVM kernels receive: block-sparse (values, cols, crow) of the same matrix."""
    fmt, pattern = FORMATS[name], PATTERNS[name]
    weight, mask, x = _layer(pattern)
    args = fmt.call_args(x, fmt.compress(weight, mask, pattern), None, (16, 24), pattern)
    static = fmt.static_call(args, lambda t: tuple(t.shape))
    assert (static.out_features, static.in_features) == (16, 24)
    assert static.block == (pattern.block if name == "bsr" else (1, 1))
    assert static.nm == ((2, 4) if name == "nm" else None)
    values, cols, crow, bias = fmt.kernel_operands(static, args[1:])
    assert bias is None and cols.dtype == crow.dtype == torch.int64
    r, c = static.block
    dense = from_bsr(values.reshape(-1, r, c), cols, crow, (16, 24))
    torch.testing.assert_close(dense, weight * mask)


def test_natural_format_and_lookup_by_op() -> None:
    assert natural_format(PATTERNS["nm"]) is FORMATS["nm"]
    assert natural_format(PATTERNS["bsr"]) is FORMATS["bsr"]
    assert natural_format(SparsityPattern("block", 0.5, block=(1, 1))) is FORMATS["csr"]
    assert natural_format(PATTERNS["csr"]) is FORMATS["csr"]
    for fmt in FORMATS.values():
        assert format_of(fmt.op) is fmt
        assert isinstance(fmt, SparseFormat)
    assert format_of(torch.ops.aten.linear.default) is None
    assert not FORMATS["bsr"].fits(PATTERNS["nm"]) and FORMATS["csr"].fits(PATTERNS["nm"])
