"""Registration of the sparse linear ops with torch.library: reference and fake kernels.

Rules:
- reference kernels expand the block or N:M structure to element CSR with index arithmetic
  (no Python loop over blocks or rows) and multiply with torch's CSR kernel; they are the
  correctness reference and the CPU baseline the break-even gate measures;
- fake kernels only compute the output shape `[..., out_features]`, so export works with
  dynamic leading dims.

Example:
    y = torch.ops.sparsec.csr_linear(x, values, cols, crow, None, 64, 32)
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["bsr_linear", "csr_linear", "nm_linear"]


def _csr_matmul(
    x: Tensor,
    values: Tensor,
    cols: Tensor,
    crow: Tensor,
    bias: Tensor | None,
    out_features: int,
    in_features: int,
) -> Tensor:
    """`x @ W.T + bias` for an element-CSR W, over any leading dims of x."""
    flat = x.reshape(-1, in_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that sparse CSR support is in beta
        weight = torch.sparse_csr_tensor(
            crow, cols, values.to(x.dtype), (out_features, in_features)
        )
        y = (weight @ flat.t()).t()
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out_features).contiguous()


def _element_csr_of_bsr(
    values: Tensor, col_indices: Tensor, crow_indices: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Element CSR (values, cols, row pointers) of a BSR triple, rows sorted, cols ascending."""
    nnz, r, c = values.shape
    device = values.device
    counts = crow_indices.diff()
    block_row = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    offset = torch.arange(nnz, device=device) - crow_indices[block_row]  # block's rank in its row
    i = torch.arange(r, device=device).view(1, r, 1)
    j = torch.arange(c, device=device).view(1, 1, c)
    # element (k, i, j) sits in row block_row*r + i, after the rows above and the blocks left of it
    start = (crow_indices[block_row] * r * c).view(-1, 1, 1)
    position = start + i * (counts[block_row] * c).view(-1, 1, 1) + offset.view(-1, 1, 1) * c + j
    flat_values = values.new_empty(nnz * r * c)
    flat_values[position.reshape(-1)] = values.reshape(-1)
    flat_cols = col_indices.new_empty(nnz * r * c)
    flat_cols[position.reshape(-1)] = (
        (col_indices.view(-1, 1, 1) * c + j).expand(nnz, r, c).reshape(-1)
    )
    row_start = crow_indices[:-1].view(-1, 1) * r * c + torch.arange(r, device=device).view(
        1, r
    ) * (counts * c).view(-1, 1)
    pointers = torch.cat([row_start.reshape(-1), crow_indices[-1:] * r * c])
    return flat_values, flat_cols, pointers


def _check_x(x: Tensor, in_features: int, op: str) -> None:
    if x.shape[-1] != in_features:
        raise ValueError(
            f"sparsec::{op}: x has {x.shape[-1]} features, the weight takes {in_features}"
        )


@torch.library.custom_op("sparsec::bsr_linear", mutates_args=())
def bsr_linear(
    x: Tensor,
    values: Tensor,
    col_indices: Tensor,
    crow_indices: Tensor,
    bias: Tensor | None,
    out_features: int,
    in_features: int,
) -> Tensor:
    """y = x @ W.T + bias, W block-sparse (r×c blocks) in BSR form."""
    _check_x(x, in_features, "bsr_linear")
    flat_values, cols, crow = _element_csr_of_bsr(values, col_indices, crow_indices)
    return _csr_matmul(x, flat_values, cols, crow, bias, out_features, in_features)


@torch.library.custom_op("sparsec::csr_linear", mutates_args=())
def csr_linear(
    x: Tensor,
    values: Tensor,
    col_indices: Tensor,
    crow_indices: Tensor,
    bias: Tensor | None,
    out_features: int,
    in_features: int,
) -> Tensor:
    """y = x @ W.T + bias, W unstructured sparse in CSR form."""
    _check_x(x, in_features, "csr_linear")
    return _csr_matmul(x, values, col_indices, crow_indices, bias, out_features, in_features)


@torch.library.custom_op("sparsec::nm_linear", mutates_args=())
def nm_linear(
    x: Tensor, values: Tensor, indices: Tensor, bias: Tensor | None, n: int, m: int
) -> Tensor:
    """y = x @ W.T + bias, W with n of every m input features kept (compressed N:M)."""
    out_features, slots = values.shape
    in_features = slots // n * m
    _check_x(x, in_features, "nm_linear")
    cols = torch.arange(slots, device=values.device) // n * m + indices.to(torch.int64)
    crow = torch.arange(out_features + 1, device=values.device) * slots
    return _csr_matmul(
        x, values.reshape(-1), cols.reshape(-1), crow, bias, out_features, in_features
    )


def _fake_output(x: Tensor, out_features: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


@bsr_linear.register_fake
def _(x, values, col_indices, crow_indices, bias, out_features, in_features):  # type: ignore[no-untyped-def]
    return _fake_output(x, out_features)


@csr_linear.register_fake
def _(x, values, col_indices, crow_indices, bias, out_features, in_features):  # type: ignore[no-untyped-def]
    return _fake_output(x, out_features)


@nm_linear.register_fake
def _(x, values, indices, bias, n, m):  # type: ignore[no-untyped-def]
    return _fake_output(x, values.shape[0])
