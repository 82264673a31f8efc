"""Sparsity patterns and masks that meet them exactly.

Rules:
- a weight is `[out, in]`; N:M groups are m consecutive input features of one row (the
  reduction axis, as sparse tensor cores and the N:M op expect); blocks are r×c with r
  along output features and c along input features;
- a conv weight `[out, in/groups, *kernel]` is viewed as the implicit-GEMM matrix
  `[out, kernel · in/groups]` with input channels innermost (channels-last, `weight_matrix`):
  an N:M group is m consecutive input channels of one kernel position, a block r output
  channels × c such channels, so `in/groups` must divide by m or c (and `out/groups` by r:
  no block spans two conv groups);
- `mask_from_scores` keeps the highest scores: unstructured and block masks prune exactly
  `round(sparsity * count)` weights or blocks (per layer, or per row with `per_row=True`),
  N:M masks keep exactly n of every m;
- shapes must divide (`in % m == 0`, `out % r == 0`, `in % c == 0`): `refusal` says why not;
  `mask_from_scores` and `check_mask` take conv-shaped tensors too, through the matrix view.

Example:
    pattern = SparsityPattern("nm", n=2, m=4)
    mask = mask_from_scores(weight.abs(), pattern)
    assert check_mask(mask, pattern) is None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sparsec.ir.graph import MASKS_META

__all__ = [
    "MASKS_META",
    "PatternKind",
    "SparsityPattern",
    "WeightMask",
    "check_mask",
    "from_weight_matrix",
    "mask_from_scores",
    "recorded_masks",
    "weight_matrix",
]

PatternKind = Literal["unstructured", "nm", "block"]


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The 2-D `[out, reduction]` view: a linear weight as is; a conv weight
    `[out, in/groups, *kernel]` as `[out, kernel · in/groups]`, input channels innermost."""
    if weight.dim() <= 2:
        return weight
    return weight.movedim(1, -1).reshape(weight.shape[0], -1)


def from_weight_matrix(matrix: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """The inverse of `weight_matrix` for a weight of `shape`."""
    if len(shape) <= 2:
        return matrix.reshape(shape)
    out_channels, per_group, *kernel = shape
    return matrix.reshape(out_channels, *kernel, per_group).movedim(-1, 1).contiguous()


@dataclass(frozen=True)
class SparsityPattern:
    """Which weights may be zero: unstructured, N of every M, or whole r×c blocks."""

    kind: PatternKind
    sparsity: float = 0.5
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        if self.kind == "nm" and not 0 < self.n < self.m:
            raise ValueError(f"N:M needs 0 < n < m, got {self.n}:{self.m}")
        if not 0.0 <= self.sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {self.sparsity}")
        if min(self.block) < 1:
            raise ValueError(f"block sides must be >= 1, got {self.block}")

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.kind == "nm" else self.sparsity

    def refusal(self, shape: tuple[int, ...], groups: int = 1) -> str | None:
        """Why a weight of `shape` (`[out, in]`, or a conv's `[out, in/groups, *kernel]` with
        `groups` groups) cannot take this pattern, or None if it can."""
        if len(shape) > 2:
            return self._conv_refusal(shape, groups)
        if len(shape) != 2:
            return f"weight is {len(shape)}-D; patterns apply to 2-D [out, in] weights"
        out_features, in_features = shape
        if self.kind == "nm" and in_features % self.m:
            return f"in_features {in_features} is not a multiple of m={self.m}"
        if self.kind == "block":
            r, c = self.block
            if out_features % r or in_features % c:
                return f"weight {out_features}×{in_features} is not a multiple of block {r}×{c}"
        return None

    def _conv_refusal(self, shape: tuple[int, ...], groups: int) -> str | None:
        out_channels, per_group = shape[:2]
        inputs = f"{per_group} input channels" + (" per group" if groups > 1 else "")
        if self.kind == "nm" and per_group % self.m:
            return (
                f"{inputs} is not a multiple of m={self.m} "
                "(an N:M group is m input channels of one kernel position)"
            )
        if self.kind == "block":
            r, c = self.block
            outputs = f"{out_channels // groups} output channels" + (
                " per group" if groups > 1 else ""
            )
            if out_channels % (r * groups) or per_group % c:
                return (
                    f"conv with {outputs} and {inputs} is not a multiple of block {r}×{c} "
                    "(r output × c input channels of one kernel position)"
                )
        return None

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.sparsity:.0%} block {self.block[0]}x{self.block[1]}"
        return f"{self.sparsity:.0%} unstructured"


def _prune_lowest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask over the last axis of `scores` (rows independent) pruning the lowest fraction."""
    count = round(fraction * scores.shape[-1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if count:
        lowest = torch.topk(scores, count, dim=-1, largest=False).indices
        mask.scatter_(-1, lowest, False)
    return mask


def mask_from_scores(
    scores: torch.Tensor, pattern: SparsityPattern, *, per_row: bool = False
) -> torch.Tensor:
    """A boolean keep-mask of `scores`' shape that meets `pattern`, keeping the top scores."""
    reason = pattern.refusal(tuple(scores.shape))
    if reason is not None:
        raise ValueError(f"cannot build a {pattern} mask: {reason}")
    if scores.dim() > 2:
        mask = mask_from_scores(weight_matrix(scores), pattern, per_row=per_row)
        return from_weight_matrix(mask, scores.shape)
    scores = scores.detach().float()
    out_features, in_features = scores.shape
    if pattern.kind == "nm":
        groups = scores.reshape(out_features, in_features // pattern.m, pattern.m)
        keep = torch.topk(groups, pattern.n, dim=-1).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
        return mask.reshape(out_features, in_features)
    if pattern.kind == "block":
        r, c = pattern.block
        blocks = scores.reshape(out_features // r, r, in_features // c, c).sum((1, 3))
        flat = blocks if per_row else blocks.reshape(1, -1)
        kept = _prune_lowest(flat, pattern.sparsity).reshape(blocks.shape)
        return kept.repeat_interleave(r, 0).repeat_interleave(c, 1)
    flat = scores if per_row else scores.reshape(1, -1)
    return _prune_lowest(flat, pattern.sparsity).reshape(scores.shape)


def check_mask(mask: torch.Tensor, pattern: SparsityPattern) -> str | None:
    """None if `mask` meets `pattern`'s structure; otherwise what is wrong, with a location."""
    reason = pattern.refusal(tuple(mask.shape))
    if reason is not None:
        return reason
    mask = weight_matrix(mask)
    out_features, in_features = mask.shape
    if pattern.kind == "nm":
        counts = mask.reshape(out_features, -1, pattern.m).sum(-1)
        bad = (counts > pattern.n).nonzero()
        if len(bad):
            row, group = bad[0].tolist()
            return (
                f"row {row}, group {group} (inputs {group * pattern.m}..{group * pattern.m + pattern.m - 1})"
                f" keeps {int(counts[row, group])} > n={pattern.n}"
            )
    if pattern.kind == "block":
        r, c = pattern.block
        blocks = mask.reshape(out_features // r, r, in_features // c, c).sum((1, 3))
        bad = ((blocks > 0) & (blocks < r * c)).nonzero()
        if len(bad):
            row, col = bad[0].tolist()
            return f"block ({row}, {col}) is partly kept ({int(blocks[row, col])} of {r * c})"
    return None


@dataclass(frozen=True)
class WeightMask:
    """The pattern a weight was sparsified to and its keep-mask, in the weight's own shape
    (fine-tuning keeps it)."""

    pattern: SparsityPattern
    mask: torch.Tensor


def recorded_masks(module: torch.nn.Module) -> dict[str, WeightMask]:
    """The masks the sparsify pass recorded on a graph module (empty if none)."""
    return dict(getattr(module, "meta", {}).get(MASKS_META, {}))
