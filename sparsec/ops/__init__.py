"""Sparse linear ops (`torch.ops.sparsec.*`), their compressed formats, masks and ONNX form.

The op contract (backends, the TVM kernels included, rely on it):
- `torch.ops.sparsec.bsr_linear(x, values, col_indices, crow_indices, bias, out_features: int,
  in_features: int) -> Tensor`: `y = x @ W.T + bias`, W `[out_features, in_features]`
  block-sparse with r×c blocks (r along output features, c along input features):
  `values [nnz_blocks, r, c]` (x's dtype), `col_indices [nnz_blocks]` int64 block columns,
  sorted within each block row, `crow_indices [out_features / r + 1]` int64 block-row
  pointers; x is `[..., in_features]`; `bias [out_features]` or None;
- `torch.ops.sparsec.csr_linear(x, values, col_indices, crow_indices, bias, out_features,
  in_features)`: the same with r = c = 1, `values [nnz]`, `crow_indices [out_features + 1]`;
- `torch.ops.sparsec.nm_linear(x, values, indices, bias, n: int, m: int) -> Tensor`: N:M
  along the input (reduction) axis: in every group of m consecutive input features of a
  row at most n weights are non-zero; `values [out, in * n / m]`, `indices [out, in * n / m]`
  (uint8, or any integer dtype: position 0..m-1 within the group; slot k of a row belongs to
  group k // n); a group with fewer than n non-zeros stores zeros in its spare slots;
- shapes must divide: `out % r == 0`, `in % c == 0`, `in % m == 0`; nothing is padded.
  `formats.py` and the sparsify pass refuse other shapes with a PreconditionError;
- every op has a CPU reference kernel (the block/N:M structure is expanded to element CSR
  with vectorised index arithmetic and multiplied with torch's CSR kernel) and a fake
  kernel, so graphs with these ops trace, `torch.export.save`/`load` (pickle-free) and
  export to ONNX (each format's `onnx_translation` in `sparse_formats.py`, collected by
  `onnx.py`: a decomposition that rebuilds W from values and indices inside the ONNX graph
  and runs MatMul, so ONNX Runtime computes the same numbers).

Example:
    values, cols, crow = to_bsr(weight, (16, 1))
    y = torch.ops.sparsec.bsr_linear(x, values, cols, crow, bias, 3072, 768)
"""

from sparsec.ops import _kernels
from sparsec.ops.formats import (
    from_bsr,
    from_csr,
    from_nm,
    to_bsr,
    to_csr,
    to_nm,
)
from sparsec.ops.masks import (
    MASKS_META,
    SparsityPattern,
    WeightMask,
    check_mask,
    from_weight_matrix,
    mask_from_scores,
    recorded_masks,
    weight_matrix,
)

bsr_linear = _kernels.bsr_linear
csr_linear = _kernels.csr_linear
nm_linear = _kernels.nm_linear

__all__ = [
    "MASKS_META",
    "SparsityPattern",
    "WeightMask",
    "bsr_linear",
    "check_mask",
    "csr_linear",
    "from_bsr",
    "from_csr",
    "from_nm",
    "from_weight_matrix",
    "mask_from_scores",
    "nm_linear",
    "recorded_masks",
    "to_bsr",
    "to_csr",
    "to_nm",
    "weight_matrix",
]
