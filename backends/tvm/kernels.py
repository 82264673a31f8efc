"""Block-sparse TIR kernels for y = x @ Wᵀ + b on CPU, W [N, K] in BSR with r×c blocks.

Rules:
- W is given as `values [nnz, r, c]`, `col_indices [nnz]` (block columns) and
  `crow_indices [N/r + 1]` (int64, CSR over block rows); unstructured (CSR) is r = c = 1;
- `x` is [m, K] with m symbolic (batch × sequence) and nnz symbolic, so one compiled kernel
  serves every layer of the same (N, K, r, c);
- two schedules, both parallel over block rows, written directly as loops:
  `FEATURE` vectorises over the r output features of a block (x stays token-major, no
  transpose; pays when r fills a vector), `TOKEN` vectorises over `lanes` tokens of a
  transposed activation tile (any r×c, including 1×1; the transpose is one pass over x);
- buffers may sit at any element offset and alignment (torch views, numpy memory):
  aligned vector loads on a 16-byte-aligned tensor would crash;
- token tails (m not a multiple of the tile) run as a separate scalar-tile loop, so every
  shape is exact; an empty block row (100% sparsity) yields the bias.

Example:
    func = bsr_kernel(BsrShape(3072, 768, 16, 1), Schedule.FEATURE, lanes=16)
    lib = tvm.compile(tvm.IRModule({"bsr": func}), target=host_target())
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tvm import tirx
from tvm.script import tirx as T

from sparsec.errors import BackendError

__all__ = ["BsrShape", "Schedule", "bsr_kernel", "choose_schedule"]

_TOKEN_TILE_ROWS = 8  # FEATURE: token rows kept in registers (8 × one vector of features)


class Schedule(Enum):
    """Which axis a kernel vectorises: the block's output features, or tokens."""

    FEATURE = "feature"
    TOKEN = "token"


@dataclass(frozen=True)
class BsrShape:
    """The static part of a block-sparse linear: W is [out_features, in_features], blocks r×c."""

    out_features: int
    in_features: int
    r: int
    c: int

    def __post_init__(self) -> None:
        if min(self.out_features, self.in_features, self.r, self.c) < 1:
            raise BackendError(f"block-sparse shape must be positive: {self}")
        if self.out_features % self.r or self.in_features % self.c:
            raise BackendError(
                f"{self.r}×{self.c} blocks do not tile a [{self.out_features}, "
                f"{self.in_features}] weight; the block shape must divide the weight's shape"
            )

    @property
    def block_rows(self) -> int:
        return self.out_features // self.r


def choose_schedule(shape: BsrShape, lanes: int) -> Schedule:
    """FEATURE when a block's output features fill a whole vector, else TOKEN.

    Measured at [128, 768] × [3072, 768] (benchmarks/tvm_sparse.py): 16×1 blocks run ~1.5×
    faster feature-vectorised; 8×1, 4×1, 1×1 and 1×c blocks leave lanes empty that way and
    run 1–6× faster token-vectorised.
    """
    return Schedule.FEATURE if shape.r >= lanes else Schedule.TOKEN


def bsr_kernel(shape: BsrShape, schedule: Schedule, lanes: int) -> tirx.PrimFunc:
    """The TIR kernel of `shape` under `schedule`; args (x, values, cols, crow, bias, y)."""
    if schedule is Schedule.FEATURE:
        return _feature_kernel(shape, _TOKEN_TILE_ROWS)
    return _token_kernel(shape, lanes)


def _feature_kernel(shape: BsrShape, tile: int) -> tirx.PrimFunc:
    n, k, r, c, nb = shape.out_features, shape.in_features, shape.r, shape.c, shape.block_rows

    @T.prim_func(private=True)
    def kernel(x: T.handle, v: T.handle, ci: T.handle, rp: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        nnz = T.int64()
        X = T.match_buffer(x, (m, k), "float32", align=4, offset_factor=1)
        V = T.match_buffer(v, (nnz, r, c), "float32", align=4, offset_factor=1)
        C = T.match_buffer(ci, (nnz,), "int64", align=4, offset_factor=1)
        P = T.match_buffer(rp, (nb + 1,), "int64", align=4, offset_factor=1)
        B = T.match_buffer(b, (n,), "float32", align=4, offset_factor=1)
        Y = T.match_buffer(y, (m, n), "float32", align=4, offset_factor=1)
        for br in T.parallel(T.int64(nb)):
            acc = T.alloc_buffer((tile, r), "float32", scope="local")
            for mo in range(m // tile):
                for mi in T.unroll(tile):
                    for i in T.vectorized(r):
                        acc[mi, i] = T.float32(0)
                for j in range(P[br], P[br + 1]):
                    for kk in T.unroll(c):
                        for mi in T.unroll(tile):
                            for i in T.vectorized(r):
                                acc[mi, i] = (
                                    acc[mi, i] + V[j, i, kk] * X[mo * tile + mi, C[j] * c + kk]
                                )
                for mi in T.unroll(tile):
                    for i in T.vectorized(r):
                        Y[mo * tile + mi, br * r + i] = acc[mi, i] + B[br * r + i]
            for mt in range(m % tile):
                for i in T.vectorized(r):
                    acc[0, i] = T.float32(0)
                for j in range(P[br], P[br + 1]):
                    for kk in T.unroll(c):
                        for i in T.vectorized(r):
                            acc[0, i] = (
                                acc[0, i] + V[j, i, kk] * X[m - m % tile + mt, C[j] * c + kk]
                            )
                for i in T.vectorized(r):
                    Y[m - m % tile + mt, br * r + i] = acc[0, i] + B[br * r + i]

    return kernel


def _token_kernel(shape: BsrShape, lanes: int) -> tirx.PrimFunc:
    n, k, r, c, nb = shape.out_features, shape.in_features, shape.r, shape.c, shape.block_rows

    @T.prim_func(private=True)
    def kernel(x: T.handle, v: T.handle, ci: T.handle, rp: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        nnz = T.int64()
        X = T.match_buffer(x, (m, k), "float32", align=4, offset_factor=1)
        V = T.match_buffer(v, (nnz, r, c), "float32", align=4, offset_factor=1)
        C = T.match_buffer(ci, (nnz,), "int64", align=4, offset_factor=1)
        P = T.match_buffer(rp, (nb + 1,), "int64", align=4, offset_factor=1)
        B = T.match_buffer(b, (n,), "float32", align=4, offset_factor=1)
        Y = T.match_buffer(y, (m, n), "float32", align=4, offset_factor=1)
        # x transposed to feature-major, tokens padded to whole vectors with zeros
        XT = T.alloc_buffer((k, (m + lanes - 1) // lanes * lanes), "float32")
        for kt in T.parallel(T.int64(k)):
            for t in range((m + lanes - 1) // lanes * lanes):
                XT[kt, t] = T.if_then_else(t < m, X[T.min(t, m - 1), kt], T.float32(0))
        for br in T.parallel(T.int64(nb)):
            acc = T.alloc_buffer((r, lanes), "float32", scope="local")
            for mo in range((m + lanes - 1) // lanes):
                for i in T.unroll(r):
                    for lane in T.vectorized(lanes):
                        acc[i, lane] = T.float32(0)
                for j in range(P[br], P[br + 1]):
                    for kk in T.unroll(c):
                        for i in T.unroll(r):
                            for lane in T.vectorized(lanes):
                                acc[i, lane] = (
                                    acc[i, lane]
                                    + V[j, i, kk] * XT[C[j] * c + kk, mo * lanes + lane]
                                )
                for lane in range(T.min(lanes, m - mo * lanes)):
                    for i in T.unroll(r):
                        Y[mo * lanes + lane, br * r + i] = acc[i, lane] + B[br * r + i]

    return kernel
