"""The order a TOKEN kernel reads a weight's blocks in: slab-major.

Why: a TOKEN kernel multiplies many block rows by one slab of input features at a time,
so the slab's panel rows stay in L1 while every block row of its task reads them
(`kernels` module rules); storing a slab's blocks together keeps the kernel's reads of
values and cols one sequential stream. Measured, 1×1 blocks at 90%, [128, 768] × [3072,
768], 1 thread, Zen 5: 0.93 ms with per-task slab bounds over CSR order, 0.75 ms slab-major.

Rules:
- a slab is `slab_columns(shape)` block columns (`SLAB_FEATURES` input features); a weight
  has `slab_count(shape)` slabs;
- `slab_major` sorts the blocks by (slab, block row), stable, so each row's blocks keep
  their order; `crow` becomes the index over (slab, block row): the blocks of block row i in
  slab s are `crow[s·rows + i] ≤ j < crow[s·rows + i + 1]`, length slabs · rows + 1;
- with one slab CSR order is slab-major order: the arrays come back unchanged;
- `values` and `cols` may carry one unread stand-in block past `crow[-1]`
  (`sparse_calls.kernel_arrays`); it stays last.

Example:
    values, cols, crow = slab_major(shape, values, cols, crow)  # then call the TOKEN kernel
"""

from __future__ import annotations

import torch

from .kernels import BsrShape, slab_columns, slab_count

__all__ = ["slab_major"]


def slab_major(
    shape: BsrShape, values: torch.Tensor, cols: torch.Tensor, crow: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, cols, crow) of a BSR weight in the slab-major order of the TOKEN kernel."""
    slabs = slab_count(shape)
    if slabs == 1:
        return values, cols, crow
    rows = shape.block_rows
    nnz = int(crow[-1])
    row_of = torch.repeat_interleave(torch.arange(rows), crow.diff())
    key = torch.div(cols[:nnz], slab_columns(shape), rounding_mode="floor") * rows + row_of
    order = torch.sort(key, stable=True).indices
    order = torch.cat([order, torch.arange(nnz, values.shape[0])])  # the stand-in, if any
    counts = torch.bincount(key, minlength=slabs * rows)
    slab_crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    return values[order].contiguous(), cols[order].contiguous(), slab_crow
