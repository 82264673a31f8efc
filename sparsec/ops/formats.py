"""Compressed weight formats of the sparse ops, and their dense inverses.

Rules:
- `to_*` take a dense `[out, in]` weight and optionally its keep-mask (so a kept weight that
  happens to be 0 stays stored); without a mask, non-zeros are kept;
- indices are int64 (CSR/BSR) and uint8 (N:M positions, ascending within each group);
- shapes that do not divide the block or group raise ValueError naming the shape.

Example:
    values, cols, crow = to_bsr(weight, (16, 1))
    assert torch.equal(from_bsr(values, cols, crow, weight.shape), weight)
"""

from __future__ import annotations

import torch

__all__ = ["from_bsr", "from_csr", "from_nm", "to_bsr", "to_csr", "to_nm"]


def _keep(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(
            f"sparse formats take 2-D [out, in] weights, got shape {tuple(weight.shape)}"
        )
    keep = weight != 0 if mask is None else mask.to(torch.bool)
    if keep.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} != weight shape {tuple(weight.shape)}")
    return keep


def _pointers(rows: torch.Tensor, count: int) -> torch.Tensor:
    """CSR row pointers from sorted row ids."""
    lengths = torch.bincount(rows, minlength=count)
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def to_bsr(
    weight: torch.Tensor, block: tuple[int, int], mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(values [nnz, r, c], col_indices [nnz], crow_indices [out/r + 1])` of the kept blocks."""
    keep = _keep(weight, mask)
    r, c = block
    out_features, in_features = weight.shape
    if out_features % r or in_features % c:
        raise ValueError(f"weight {out_features}×{in_features} is not a multiple of block {r}×{c}")
    shape = (out_features // r, r, in_features // c, c)
    kept_blocks = keep.reshape(shape).any(3).any(1)
    rows, cols = kept_blocks.nonzero(as_tuple=True)
    values = weight.detach().reshape(shape).permute(0, 2, 1, 3)[rows, cols]
    values = values * keep.reshape(shape).permute(0, 2, 1, 3)[rows, cols]
    return values.contiguous(), cols.contiguous(), _pointers(rows, shape[0])


def to_csr(
    weight: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(values [nnz], col_indices [nnz], crow_indices [out + 1])` of the kept weights."""
    values, cols, crow = to_bsr(weight, (1, 1), mask)
    return values.reshape(-1), cols, crow


def to_nm(
    weight: torch.Tensor, n: int, m: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(values [out, in*n/m], indices [out, in*n/m] uint8)`: n slots per group of m."""
    keep = _keep(weight, mask)
    out_features, in_features = weight.shape
    if in_features % m:
        raise ValueError(f"in_features {in_features} is not a multiple of m={m}")
    groups = keep.reshape(out_features, -1, m)
    counts = groups.sum(-1)
    if bool((counts > n).any()):
        row, group = (counts > n).nonzero()[0].tolist()
        raise ValueError(
            f"row {row}, group {group} keeps {int(counts[row, group])} weights > n={n}"
        )
    # kept positions first (stable), then pad with unkept ones; ascending within the group
    order = torch.argsort((~groups).to(torch.int8), dim=-1, stable=True)[..., :n]
    positions = order.sort(-1).values
    values = weight.detach().reshape(out_features, -1, m).gather(-1, positions)
    values = values * groups.gather(-1, positions)
    return values.reshape(out_features, -1).contiguous(), positions.reshape(out_features, -1).to(
        torch.uint8
    )


def from_bsr(
    values: torch.Tensor,
    col_indices: torch.Tensor,
    crow_indices: torch.Tensor,
    shape: tuple[int, int] | torch.Size,
) -> torch.Tensor:
    """The dense `[out, in]` weight of a BSR triple."""
    out_features, in_features = shape
    r, c = values.shape[1:]
    rows = torch.repeat_interleave(
        torch.arange(crow_indices.numel() - 1, device=values.device), crow_indices.diff()
    )
    blocks = values.new_zeros(out_features // r, in_features // c, r, c)
    blocks[rows, col_indices] = values
    return blocks.permute(0, 2, 1, 3).reshape(out_features, in_features)


def from_csr(
    values: torch.Tensor,
    col_indices: torch.Tensor,
    crow_indices: torch.Tensor,
    shape: tuple[int, int] | torch.Size,
) -> torch.Tensor:
    """The dense `[out, in]` weight of a CSR triple."""
    return from_bsr(values.reshape(-1, 1, 1), col_indices, crow_indices, shape)


def from_nm(values: torch.Tensor, indices: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The dense `[out, in]` weight of an N:M pair."""
    out_features, slots = values.shape
    columns = torch.arange(slots, device=values.device) // n * m + indices.to(torch.int64)
    return values.new_zeros(out_features, slots // n * m).scatter_(1, columns, values)
