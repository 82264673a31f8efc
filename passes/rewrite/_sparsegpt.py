"""SparseGPT's layer-wise OBS reconstruction (Frantar & Alistarh, 2023), for one weight.

Rules:
- H = XᵀX from calibration rows (any scale); dead inputs (H_jj = 0) get their weights
  zeroed; H is damped by `damp · mean(diag H)` before the Cholesky inverse;
- columns are swept in blocks of `blocksize`; the mask is chosen per column block
  (unstructured: exactly round(s · block) lowest w²/[H⁻¹]²_jj; block r×c: whole blocks by
  the summed score) or per group of m at the group's first column (N:M), always from the
  already-updated weights; each pruned weight's error is spread over the columns to its
  right with the inverse Hessian's Cholesky row, so surviving weights compensate;
- the result meets the pattern exactly; it is computed in float32 on the weight's device.

Example:
    new_weight, mask = sparsegpt(weight, gram, SparsityPattern("nm", n=2, m=4))
"""

from __future__ import annotations

import torch

from sparsec.errors import PreconditionError
from sparsec.ops.masks import SparsityPattern

__all__ = ["sparsegpt"]


def _block_columns(pattern: SparsityPattern, blocksize: int) -> int:
    step = {"nm": pattern.m, "block": pattern.block[1]}.get(pattern.kind, 1)
    return max(step, blocksize // step * step)


def _column_block_mask(
    weights: torch.Tensor, hinv_diag: torch.Tensor, pattern: SparsityPattern
) -> torch.Tensor:
    """Keep-mask for one column block: prune the lowest w²/[H⁻¹]²_jj (per element or block)."""
    scores = weights.pow(2) / hinv_diag.pow(2).unsqueeze(0)
    mask = torch.ones_like(weights, dtype=torch.bool)
    if pattern.kind == "block":
        r, c = pattern.block
        rows, cols = weights.shape
        blocks = scores.reshape(rows // r, r, cols // c, c).sum((1, 3)).reshape(-1)
        count = round(pattern.sparsity * blocks.numel())
        keep = torch.ones_like(blocks, dtype=torch.bool)
        if count:
            keep[torch.topk(blocks, count, largest=False).indices] = False
        keep = keep.reshape(rows // r, cols // c)
        return keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    count = round(pattern.sparsity * scores.numel())
    if count:
        mask.view(-1)[torch.topk(scores.reshape(-1), count, largest=False).indices] = False
    return mask


def sparsegpt(
    weight: torch.Tensor,
    gram: torch.Tensor,
    pattern: SparsityPattern,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pruned, compensated weight and its keep-mask."""
    reason = pattern.refusal(tuple(weight.shape))
    if reason is not None:
        raise PreconditionError(f"sparsegpt cannot apply {pattern}: {reason}")
    w = weight.detach().clone().float()
    h = gram.detach().clone().float()
    columns = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError as exc:
        raise PreconditionError(
            f"sparsegpt: the input Hessian is not positive definite even with damp={damp}; "
            "raise damp or give more calibration rows"
        ) from exc
    mask = torch.ones_like(w, dtype=torch.bool)
    step = _block_columns(pattern, blocksize)
    for start in range(0, columns, step):
        end = min(start + step, columns)
        block = w[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        errors = torch.zeros_like(block)
        block_mask = (
            _column_block_mask(block, torch.diag(hinv_block), pattern)
            if pattern.kind != "nm"
            else torch.ones_like(block, dtype=torch.bool)
        )
        for i in range(end - start):
            if pattern.kind == "nm" and i % pattern.m == 0:
                scores = block[:, i : i + pattern.m].pow(2) / torch.diag(hinv_block)[
                    i : i + pattern.m
                ].pow(2)
                pruned = torch.topk(scores, pattern.m - pattern.n, dim=1, largest=False).indices
                block_mask[:, i : i + pattern.m] = True
                block_mask.scatter_(1, i + pruned, False)
            column = block[:, i]
            kept = column * block_mask[:, i]
            error = (column - kept) / hinv_block[i, i]
            block[:, i:] -= error.unsqueeze(1) @ hinv_block[i, i:].unsqueeze(0)
            block[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = block * block_mask
        mask[:, start:end] = block_mask
        w[:, end:] -= errors @ hinv[start:end, end:]
    if not bool(torch.isfinite(w).all()):
        raise PreconditionError("sparsegpt produced non-finite weights; raise damp")
    return w.to(weight.dtype), mask
