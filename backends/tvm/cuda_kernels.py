"""The block-sparse linear kernel for CUDA: one thread block per block row, threads over tokens.

Rules:
- same signature and layouts as the CPU kernels (`kernels.py`): (x [m, K], values [nnz, r, c],
  cols [nnz], crow [N/r + 1], bias [N], y [m, N]), m and nnz symbolic;
- a thread keeps its token's r accumulators in registers and walks the block row's
  non-zero blocks; block-row values are read by all threads of the block at once (broadcast);
- it is correct on any shape; it is not tuned (no GPU on the build machine to tune it on).

Example:
    func = bsr_cuda_kernel(BsrShape(3072, 768, 16, 1))
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .kernels import BsrShape

__all__ = ["bsr_cuda_kernel"]

_THREADS = 64


def bsr_cuda_kernel(shape: BsrShape) -> tirx.PrimFunc:
    """The CUDA TIR kernel of `shape`; args (x, values, cols, crow, bias, y)."""
    n, k, r, c, nb = shape.out_features, shape.in_features, shape.r, shape.c, shape.block_rows
    threads = _THREADS

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
        for br in T.thread_binding(T.int64(nb), thread="blockIdx.x"):
            for tx in T.thread_binding(T.int64(threads), thread="threadIdx.x"):
                acc = T.alloc_buffer((r,), "float32", scope="local")
                for mo in range((m + threads - 1) // threads):
                    if mo * threads + tx < m:
                        for i in T.unroll(r):
                            acc[i] = T.float32(0)
                        for j in range(P[br], P[br + 1]):
                            for kk in T.unroll(c):
                                for i in T.unroll(r):
                                    acc[i] = (
                                        acc[i] + V[j, i, kk] * X[mo * threads + tx, C[j] * c + kk]
                                    )
                        for i in T.unroll(r):
                            Y[mo * threads + tx, br * r + i] = acc[i] + B[br * r + i]

    return kernel
