"""Block-sparse TIR kernels for y = x @ Wᵀ + b on CPU, W [N, K] in BSR with r×c blocks.

Rules:
- W is given as `values [nnz, r, c]`, `col_indices [nnz]` (block columns) and
  `crow_indices [N/r + 1]` (int64, CSR over block rows; TOKEN kernels take the blocks in
  slab-major order instead, below); unstructured (CSR) is r = c = 1;
- `x` is [m, K] with m symbolic (batch × sequence) and nnz symbolic, so one compiled kernel
  serves every layer of the same (N, K, r, c);
- what depends on the CPU comes from an `Isa` record (`isa`): vector lanes, the TOKEN
  accumulators that fit its registers, whether FEATURE is used, the AVX-512 register
  broadcasts; the generator itself is vector-width generic (4-, 8- and 16-lane kernels are
  tested), so another vector unit needs an Isa record and a measurement, not new code;
- both schedules first copy x into a token-tiled, feature-major panel `XT [tiles, K, tile]`
  by 16×16 register transposes (`_TRANSPOSE`)
  (`panel_tile`; one panel row is one to four cache lines, so the random block columns a
  block row reads spread over all L1 sets, which rows of a plain xᵀ with a power-of-two
  stride do not), then run parallel over groups of block rows with register accumulators,
  one tile of tokens at a time:
  - `FEATURE` (r×1 blocks, r a multiple of the vector width), weight in CSR order,
    prefetching the panel line `_PREFETCH` blocks ahead: per non-zero block, one
    vector load of its r weights and one FMA per token of a 16-token tile, the token's
    activation broadcast from the panel (`vfmadd231ps mem{1to16}`), on AVX-512 with 16×1
    blocks the first `_REGISTER_BROADCASTS` tokens' from one load of the panel row
    (vpermps) instead; each token's output row is stored whole; tokens past the last whole
    tile run one at a time;
  - `TOKEN` (any r×c, 1×1 included): the vector runs over tokens; a task owns up to
    128 output features, kept feature-major on the stack from the bias on, and runs all
    of its block rows over one slab of 256 input features at a time, so the slab's panel
    rows stay in L1 while they are read (`SLAB_FEATURES`); the weight must come in
    slab-major order, `crow` indexing (slab, block row) (`slabs.slab_major`); a block's
    rows are computed `_sub_rows` (≤ 4) at a time over `token_vectors` (≤ 4) vectors of
    tokens, so each panel load and weight broadcast feeds several FMAs; the task's
    outputs are then written as whole vectors per token; the last partial tile runs
    vector by vector over the panel, whose padding is zeros;
- `KernelLayout` chains kernels without leaving the panel layout (up → act → down of an
  FFN): a producer writes y as the consumer's panel (`output_tile` = the consumer's
  `panel_tile`) with bias and `activation` applied as it stores, and the consumer reads it
  with `panel_input` instead of packing x (`choose_schedule` picks TOKEN for both, by
  measurement; FEATURE kernels take every layout too). A panel is `[ceil(m / tile), K, tile]`, token i
  at `[i // tile, :, i % tile]`; the padding slots of its last tile hold unspecified
  values that never reach a stored output (each token's lanes are independent). One side
  of every kernel stays token-major, which gives the kernel its token count m;
- accumulators and staging tiles live on the stack (`disable_lower_builtin`), which needs
  `tirx.disable_storage_rewrite` at compile time: StorageRewrite turns them into heap
  workspaces that LLVM cannot keep in registers (every FMA then stores its result, 3–10×
  slower). Build with `compile_config()`;
- buffers may sit at any element offset and alignment (torch views, numpy memory);
  an empty block row (100% sparsity) yields the bias (then the activation).

Example:
    func = bsr_kernel(BsrShape(3072, 768, 16, 1), Schedule.FEATURE, AVX512)
    with tvm.transform.PassContext(config=compile_config()):
        lib = tvm.compile(tvm.IRModule({"bsr": func}), target=host_target())
    # an FFN chain: up writes GELU(x·W₁ᵀ + b₁) as down's panel, down reads it
    tile = panel_tile(down_shape, Schedule.TOKEN, AVX512)
    up_layout = KernelLayout(output_tile=tile, activation=Activation.GELU)
    up = bsr_kernel(up_shape, Schedule.TOKEN, AVX512, up_layout)
    down = bsr_kernel(down_shape, Schedule.TOKEN, AVX512, KernelLayout(panel_input=True))
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from tvm import tirx
from tvm.script import tirx as T

from sparsec.errors import BackendError

from .activations import Activation, activation_expr
from .isa import Isa

__all__ = [
    "BsrShape",
    "KernelLayout",
    "Schedule",
    "bsr_kernel",
    "SLAB_FEATURES",
    "choose_schedule",
    "compile_config",
    "panel_tile",
    "slab_columns",
    "slab_count",
    "token_vectors",
]

_FEATURE_TILE = 16  # FEATURE: tokens per tile, one accumulator register each
# FEATURE: output features a parallel task writes per token row and tile (halves the
# time of writing y at 768 → 3072: y's rows are 12 KiB apart, one line per visit is slow)
_FEATURE_GROUP_FEATURES = 64
# FEATURE: blocks ahead whose panel line is prefetched: at K=3072 the panel is L2-resident
# and the random block columns defeat the hardware prefetcher (0.83 → 0.52 ms at 90%, 16×1
# with 4; 8 vs 4: 0.409 vs 0.420 ms, ties at K=768)
_PREFETCH = 8
# FEATURE: tokens of a tile whose activation is broadcast from a register (vpermps of the
# panel row, loaded once per block) instead of from memory (`vfmadd231ps mem{1to16}`).
# Why: 16 memory broadcasts + 1 weight load per 16 FMAs leave the loop load-bound
# (~10-11 cycles per block on Zen 5, 8 at FMA peak, with the data in L1); moving 4 to the
# shuffle unit balances the two. Measured 16×1, 128 tokens, 1 thread, Zen 5: x [128, 768],
# W [3072, 768] 1.87 → 1.54 ms at 50%, 1.12 → 0.92 at 70%, 0.39 → 0.32 at 90%;
# x [128, 3072], W [768, 3072] 1.98 → 1.66, 1.23 → 1.07, 0.46 → 0.42 (2 threads, 1024
# tokens: 5–18% faster, one tie at 1024 tokens, K=3072, 90%; 2, 3, 5, 6, 8 tokens: slower)
_REGISTER_BROADCASTS = 4
# tokens per pass over all block rows: each pass reads a slice of the panel that stays in
# cache; one pass over all tokens re-streams the whole panel from memory for every group of
# block rows (1024 tokens: 2–5× the per-token time of 128). FEATURE: 32 (K × 32 × 4 B ≤
# 384 KiB, L2) against 128, 16×1, 1 thread, Zen 5, same runs: 128 tokens 0.41 vs 0.44 ms
# (90%), 1.63 vs 1.75 (50%) at K=3072, 1.57 vs 1.66 (50%) and 0.333 vs 0.326 (90%) at
# K=768; 1024 tokens 10–20% faster. TOKEN: 128 (two 64-token tiles per slab sweep)
_FEATURE_CHUNK_TOKENS = 32
_TOKEN_CHUNK_TOKENS = 128
# TOKEN: input features per slab and output features per task. A task runs its block rows
# over one slab of the panel at a time (SLAB_FEATURES × tile × 4 B, L1/L2-resident), its
# outputs kept feature-major on the stack between slabs. Swept at 90%, 1×1 blocks, 1 thread,
# Zen 5, [128, 768] × [3072, 768] / [128, 3072] × [768, 3072]: 128/64 0.99/1.27 ms,
# 256/128 0.91/1.09, 256/256 1.03/1.07, 512/128 0.92/1.18 (CSR order with per-task bounds;
# slab-major order is ~20% faster again, `slabs`). The panel stays hot without prefetching
# (a prefetch per block line: 1.02 vs 0.76 ms at 768 → 3072)
SLAB_FEATURES = 256
_SLAB_ROW_FEATURES = 128
# packing x: 16×16 blocks (16 tokens × 16 features) transposed in registers, 4 stages of
# two-source shuffles, each swapping one bit of the row index with one of the lane index.
# Why: reading one feature of 16 tokens strides K·4 B and thrashes one L1 set when that is a
# multiple of 4 KiB. [128, 3072] into 16-token tiles: 0.103 ms by gathers, 0.034 ms here
# (0.016 / 0.008 at K=768); 64-token tiles by scalar copies of whole cache lines: ~0.2 ms
_TRANSPOSE = 16
_MAX_VECTORS = 4  # TOKEN: at most 4 vectors of tokens per tile (64 tokens at 16 lanes)
_MAX_SUB_ROWS = 4  # TOKEN: output features of a block per pass over its block row
_ON_STACK = {"disable_lower_builtin": True}


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


@dataclass(frozen=True)
class KernelLayout:
    """Where a kernel reads x and writes y, and what its store applies (module rules).

    - `panel_input`: x arrives as this kernel's own panel (`panel_tile` tokens per tile),
      written by the kernel before it, and is not packed again;
    - `output_tile`: y is written as a panel of that many tokens per tile (the next
      kernel's `panel_tile`, a multiple of the vector width); None: token-major [m, N];
    - `activation`: applied to y + bias as y is stored.
    """

    panel_input: bool = False
    output_tile: int | None = None
    activation: Activation = Activation.NONE

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Activation):
            raise BackendError(
                f"KernelLayout.activation must be an Activation, not {self.activation!r}"
            )
        if self.output_tile is not None and self.output_tile < 1:
            raise BackendError(f"KernelLayout.output_tile must be positive: {self.output_tile}")
        if self.panel_input and self.output_tile is not None:
            raise BackendError(
                "a kernel with a panel input and a panel output has no token-major buffer "
                "to take the token count from. Fix: fuse chains of two sparse layers, the "
                "first reading x token-major, the second writing y token-major."
            )

    @property
    def suffix(self) -> str:
        """Distinguishes the kernel's name from the token-major kernel of the same shape."""
        parts = ["_pin"] if self.panel_input else []
        if self.output_tile is not None:
            parts.append(f"_pout{self.output_tile}")
        if self.activation is not Activation.NONE:
            parts.append(f"_{self.activation.value}")
        return "".join(parts)


def compile_config() -> dict[str, Any]:
    """PassContext config every build of these kernels needs (see the module rules)."""
    return {"tirx.disable_storage_rewrite": True}


def choose_schedule(shape: BsrShape, isa: Isa, layout: KernelLayout | None = None) -> Schedule:
    """FEATURE when the ISA's registers hold its tile (`Isa.feature_schedule`, AVX-512), a
    block is one input column whose output features fill whole vectors and x and y are
    token-major; TOKEN otherwise, and for every kernel of a chain (a panel on either side).

    Measured with 16×1 blocks, 128 tokens, 1 thread, AVX-512, FEATURE vs TOKEN (slabs) in
    the same run: [128, 768] × [3072, 768] 0.42 vs 0.46 ms at 90%, 1.68 vs 1.81 at 50%;
    [128, 3072] × [768, 3072] 0.51 vs 0.57 at 90%, 1.79 vs 2.46 at 50% (1.45 vs 1.41 at
    70%). 8×1 blocks fill half a vector feature-vectorised (0.86 vs 0.63 ms at 90%, before
    slabs); 4×1, 1×1 and 1×c blocks leave most lanes empty.
    In a chain TOKEN needs no transposed stores (its accumulators already hold a feature's
    tokens, a panel vector) and reads 4 tokens' vectors per weight: BERT-base FFN, 16×1,
    90%, 1 thread, both kernels per call, before slabs: 0.85–0.92 ms TOKEN→TOKEN vs
    1.01–1.07 ms FEATURE→FEATURE at 128 tokens, 0.22 vs 0.28 ms at 8, 10.1 vs 24.2 ms at
    1024 (at 50% 5.1 vs 4.7 ms at 128 tokens, 40.8 vs 46.9 at 1024). Slabs then took the
    TOKEN chain from 4.85 to 4.24 ms at 50% and left 90% as it was (0.72 vs 0.74 ms).
    """
    if layout is not None and (layout.panel_input or layout.output_tile is not None):
        return Schedule.TOKEN
    fits = isa.feature_schedule and shape.c == 1 and shape.r % isa.lanes == 0
    return Schedule.FEATURE if fits else Schedule.TOKEN


def token_vectors(shape: BsrShape, isa: Isa) -> int:
    """TOKEN: vectors of tokens per tile, so that sub-rows × vectors accumulators fit the
    ISA's registers beside the operands (`Isa.accumulators`)."""
    return max(1, min(_MAX_VECTORS, isa.accumulators // _sub_rows(shape)))


def panel_tile(shape: BsrShape, schedule: Schedule, isa: Isa) -> int:
    """Tokens per tile of the panel the kernel of `shape` reads (what a producer must write)."""
    if schedule is Schedule.FEATURE:
        return _FEATURE_TILE
    return isa.lanes * token_vectors(shape, isa)


def bsr_kernel(
    shape: BsrShape, schedule: Schedule, isa: Isa, layout: KernelLayout | None = None
) -> tirx.PrimFunc:
    """The TIR kernel of `shape` under `schedule`; args (x, values, cols, crow, bias, y).

    x and y are token-major unless `layout` makes one of them a panel (module rules).
    """
    layout = layout or KernelLayout()
    lanes = isa.lanes
    if layout.output_tile is not None and layout.output_tile % lanes:
        raise BackendError(
            f"an output panel of {layout.output_tile} tokens per tile does not hold whole "
            f"vectors of {lanes} tokens. Fix: use the consumer's panel_tile() on this target."
        )
    if schedule is Schedule.FEATURE:
        if shape.c != 1:
            raise BackendError(f"the FEATURE schedule needs r×1 blocks, not {shape.r}×{shape.c}")
        return _feature_kernel(shape, _FEATURE_TILE, isa, layout)
    return _token_kernel(shape, lanes, token_vectors(shape, isa), layout)


def _shapes(shape: BsrShape, tile: int, layout: KernelLayout) -> tuple[Any, Any]:
    """Functions of m giving x's and y's buffer shapes under `layout`."""
    k, n, out_tile = shape.in_features, shape.out_features, layout.output_tile

    def x_shape(m: Any) -> tuple[Any, ...]:
        return ((m + tile - 1) // tile, k, tile) if layout.panel_input else (m, k)

    def y_shape(m: Any) -> tuple[Any, ...]:
        return (m, n) if out_tile is None else ((m + out_tile - 1) // out_tile, n, out_tile)

    return x_shape, y_shape


def _feature_kernel(shape: BsrShape, tile: int, isa: Isa, layout: KernelLayout) -> tirx.PrimFunc:
    n, k, r, nb = shape.out_features, shape.in_features, shape.r, shape.block_rows
    lanes = isa.lanes
    group = _feature_group(shape)
    chunk_tiles = max(1, _FEATURE_CHUNK_TOKENS // tile)
    passes, pass_of, grp_of = _task_index(nb // group, tile, chunk_tiles)
    x_shape, y_shape = _shapes(shape, tile, layout)
    panel_in = layout.panel_input
    out_tile = layout.output_tile
    token_major_out = out_tile is None
    out_tile = out_tile or tile  # only read when y is a panel
    vectors = tile // lanes  # vectors of tokens per tile, when stored to a panel
    pack = _pack(k, tile)
    # AVX-512 and a block of one vector: the panel row is one vector
    registers = isa.register_broadcasts and r == lanes and tile == lanes
    permuted = _REGISTER_BROADCASTS if registers else 0

    def act(value: Any) -> Any:
        return activation_expr(layout.activation, value)

    @T.prim_func(private=True)
    def kernel(x: T.handle, v: T.handle, ci: T.handle, rp: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        nnz = T.int64()
        X = T.match_buffer(x, x_shape(m), "float32", align=4, offset_factor=1)
        V = T.match_buffer(v, (nnz, r, 1), "float32", align=4, offset_factor=1)
        C = T.match_buffer(ci, (nnz,), "int64", align=4, offset_factor=1)
        P = T.match_buffer(rp, (nb + 1,), "int64", align=4, offset_factor=1)
        B = T.match_buffer(b, (n,), "float32", align=4, offset_factor=1)
        Y = T.match_buffer(y, y_shape(m), "float32", align=4, offset_factor=1)
        XT = (
            X
            if panel_in
            else T.alloc_buffer(((m + tile - 1) // tile, k, tile), "float32", align=64)
        )
        if not panel_in:
            pack(X, XT)
        # tasks: (pass over up to chunk_tiles whole tiles) × (group of block rows); the last
        # pass also runs the tokens past the last whole tile (one pass when m < tile)
        for task in T.parallel(passes(m) * (nb // group)):
            acc = T.alloc_buffer((tile, r), "float32", scope="local", annotations=_ON_STACK)
            row = T.alloc_buffer((lanes,), "float32", scope="local", annotations=_ON_STACK)
            for mo in range(
                pass_of(task) * chunk_tiles,
                T.min(pass_of(task) * chunk_tiles + chunk_tiles, m // tile),
            ):
                for g in range(group):
                    for t in T.unroll(tile):
                        for i in T.vectorized(r):
                            acc[t, i] = T.float32(0)
                    for j in range(P[grp_of(task) * group + g], P[grp_of(task) * group + g + 1]):
                        if _PREFETCH > 0:
                            T.evaluate(
                                T.call_llvm_intrin(
                                    "void",
                                    "llvm.prefetch.p0",
                                    T.address_of(
                                        XT[
                                            mo,
                                            C[
                                                T.min(
                                                    j + _PREFETCH,
                                                    P[grp_of(task) * group + g + 1] - 1,
                                                )
                                            ],
                                            0,
                                        ]
                                    ),
                                    T.int32(0),
                                    T.int32(3),
                                    T.int32(1),
                                )
                            )
                        # the first `permuted` tokens: one load of the panel row, each
                        # token's lane spread over a register by vpermps (index vectors
                        # t + min(crow[0], 0) = t, opaque to LLVM so it keeps them in
                        # registers instead of folding them back into memory broadcasts)
                        for t in T.unroll(permuted):
                            row[T.Ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                                f"float32x{lanes}",
                                "llvm.x86.avx512.permvar.sf.512",
                                XT[mo, C[j], T.Ramp(T.int64(0), T.int64(1), lanes)],
                                T.Broadcast(T.int32(t), lanes)
                                + T.Broadcast(T.Cast("int32", T.min(P[0], T.int64(0))), lanes),
                            )
                            for i in T.vectorized(r):
                                acc[t, i] = acc[t, i] + V[j, i, 0] * row[i]
                        for t in T.unroll(tile - permuted):
                            for i in T.vectorized(r):
                                acc[permuted + t, i] = (
                                    acc[permuted + t, i] + V[j, i, 0] * XT[mo, C[j], permuted + t]
                                )
                    for t in T.unroll(tile):
                        for i in T.vectorized(r):
                            acc[t, i] = acc[t, i] + B[(grp_of(task) * group + g) * r + i]
                    if token_major_out:
                        for t in T.unroll(tile):
                            for i in T.vectorized(r):
                                Y[mo * tile + t, (grp_of(task) * group + g) * r + i] = act(
                                    acc[t, i]
                                )
                    else:
                        # the tile transposed: each feature's tokens are one panel vector
                        for i in T.unroll(r):
                            for vo in T.unroll(vectors):
                                for lane in T.vectorized(lanes):
                                    Y[
                                        (mo * tile + vo * lanes) // out_tile,
                                        (grp_of(task) * group + g) * r + i,
                                        (mo * tile + vo * lanes) % out_tile + lane,
                                    ] = act(acc[vo * lanes + lane, i])
            if pass_of(task) == passes(m) - 1:
                for g in range(group):
                    for mt in range(m % tile):
                        for i in T.vectorized(r):
                            acc[0, i] = T.float32(0)
                        for j in range(
                            P[grp_of(task) * group + g], P[grp_of(task) * group + g + 1]
                        ):
                            for i in T.vectorized(r):
                                acc[0, i] = acc[0, i] + V[j, i, 0] * XT[m // tile, C[j], mt]
                        for i in T.vectorized(r):
                            acc[0, i] = acc[0, i] + B[(grp_of(task) * group + g) * r + i]
                        for i in T.vectorized(r):
                            if token_major_out:
                                Y[m - m % tile + mt, (grp_of(task) * group + g) * r + i] = act(
                                    acc[0, i]
                                )
                            else:
                                Y[
                                    (m - m % tile + mt) // out_tile,
                                    (grp_of(task) * group + g) * r + i,
                                    (m - m % tile + mt) % out_tile,
                                ] = act(acc[0, i])

    return kernel


def _feature_group(shape: BsrShape) -> int:
    """FEATURE: block rows per parallel task, visited together for each tile of tokens."""
    group = max(1, _FEATURE_GROUP_FEATURES // shape.r)
    while shape.block_rows % group:
        group -= 1
    return group


def _token_kernel(shape: BsrShape, lanes: int, vectors: int, layout: KernelLayout) -> tirx.PrimFunc:
    n, k, r, c, nb = shape.out_features, shape.in_features, shape.r, shape.c, shape.block_rows
    tile = lanes * vectors
    sub = _sub_rows(shape)
    rows = _slab_rows(shape, lanes)
    width = rows * r  # output features of a task: a whole vector per token when r < lanes
    slabs = slab_count(shape)
    chunk_tiles = max(1, _TOKEN_CHUNK_TOKENS // tile)
    passes, pass_of, grp_of = _task_index(nb // rows, tile, chunk_tiles)
    x_shape, y_shape = _shapes(shape, tile, layout)
    panel_in = layout.panel_input
    out_tile = layout.output_tile
    token_major_out = out_tile is None
    out_tile = out_tile or tile  # only read when y is a panel
    pack = _pack(k, tile)

    def act(value: Any) -> Any:
        return activation_expr(layout.activation, value)

    @T.macro
    def accumulate(bufs: tuple[Any, ...], task: Any, mo: Any, first: Any, count: int) -> None:
        # part[:, first : first + count·lanes] += the task's block rows × that panel slice,
        # one slab of input features at a time for all of the task's block rows
        XT, V, C, P, acc, part = bufs
        for s in range(slabs):
            for g in range(rows):
                for q in range(r // sub):
                    for i in T.unroll(sub):
                        for t in T.vectorized(count * lanes):
                            acc[i, t] = part[g * r + q * sub + i, first + t]
                    for j in range(
                        P[s * nb + grp_of(task) * rows + g], P[s * nb + grp_of(task) * rows + g + 1]
                    ):
                        for kk in T.unroll(c):
                            for i in T.unroll(sub):
                                for vo in T.unroll(count):
                                    for lane in T.vectorized(lanes):
                                        acc[i, vo * lanes + lane] = (
                                            acc[i, vo * lanes + lane]
                                            + V[j, q * sub + i, kk]
                                            * XT[mo, C[j] * c + kk, first + vo * lanes + lane]
                                        )
                    for i in T.unroll(sub):
                        for t in T.vectorized(count * lanes):
                            part[g * r + q * sub + i, first + t] = acc[i, t]

    @T.prim_func(private=True)
    def kernel(x: T.handle, v: T.handle, ci: T.handle, rp: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        nnz = T.int64()
        X = T.match_buffer(x, x_shape(m), "float32", align=4, offset_factor=1)
        V = T.match_buffer(v, (nnz, r, c), "float32", align=4, offset_factor=1)
        C = T.match_buffer(ci, (nnz,), "int64", align=4, offset_factor=1)
        P = T.match_buffer(rp, (slabs * nb + 1,), "int64", align=4, offset_factor=1)
        B = T.match_buffer(b, (n,), "float32", align=4, offset_factor=1)
        Y = T.match_buffer(y, y_shape(m), "float32", align=4, offset_factor=1)
        XT = (
            X
            if panel_in
            else T.alloc_buffer(((m + tile - 1) // tile, k, tile), "float32", align=64)
        )
        if not panel_in:
            pack(X, XT)
        # tasks: (pass over up to chunk_tiles whole tiles) × (group of block rows); the last
        # pass also runs the tokens past the last whole tile (one pass when m < tile)
        for task in T.parallel(passes(m) * (nb // rows)):
            acc = T.alloc_buffer((sub, tile), "float32", scope="local", annotations=_ON_STACK)
            # the task's outputs, feature-major, starting from the bias
            part = T.alloc_buffer((width, tile), "float32", scope="local", annotations=_ON_STACK)
            for mo in range(
                pass_of(task) * chunk_tiles,
                T.min(pass_of(task) * chunk_tiles + chunk_tiles, m // tile),
            ):
                for f in range(width):
                    for t in T.vectorized(tile):
                        part[f, t] = B[grp_of(task) * width + f]
                accumulate((XT, V, C, P, acc, part), task, mo, 0, vectors)
                if token_major_out:
                    for t in range(tile):
                        for f in T.vectorized(width):
                            Y[mo * tile + t, grp_of(task) * width + f] = act(part[f, t])
                else:
                    for f in range(width):
                        for vo in T.unroll(vectors):
                            for lane in T.vectorized(lanes):
                                Y[
                                    (mo * tile + vo * lanes) // out_tile,
                                    grp_of(task) * width + f,
                                    (mo * tile + vo * lanes) % out_tile + lane,
                                ] = act(part[f, vo * lanes + lane])
            if pass_of(task) == passes(m) - 1:
                # the last partial tile, one vector of tokens at a time
                for f in range(width):
                    for t in T.vectorized(tile):
                        part[f, t] = B[grp_of(task) * width + f]
                for vo in range((m % tile + lanes - 1) // lanes):
                    accumulate((XT, V, C, P, acc, part), task, m // tile, vo * lanes, 1)
                if token_major_out:
                    for t in range(m % tile):
                        for f in T.vectorized(width):
                            Y[m - m % tile + t, grp_of(task) * width + f] = act(part[f, t])
                else:
                    # whole vectors: lanes past m land in the panel's padding
                    for f in range(width):
                        for vo in range((m % tile + lanes - 1) // lanes):
                            for lane in T.vectorized(lanes):
                                Y[
                                    (m - m % tile + vo * lanes) // out_tile,
                                    grp_of(task) * width + f,
                                    (m - m % tile + vo * lanes) % out_tile + lane,
                                ] = act(part[f, vo * lanes + lane])

    return kernel


def _shuffle_stage(stage: int) -> tuple[list[int], list[int]]:
    """Lane patterns of one transpose stage over rows (i, i + 2^stage), concatenated: the
    new row i takes lanes whose bit `stage` is set from row i + 2^stage, and vice versa."""
    bit = 1 << stage
    low = [c if not c & bit else _TRANSPOSE + (c ^ bit) for c in range(_TRANSPOSE)]
    high = [c | bit if not c & bit else _TRANSPOSE + c for c in range(_TRANSPOSE)]
    return low, high


def _pack(k: int, tile: int) -> Any:
    """A macro packing x into the panel, XT[mo, f, t] = X[mo·tile + t, f]: whole tiles by
    16×16 blocks transposed in registers (`_TRANSPOSE`), their last K % 16 features (and
    tiles not a multiple of 16 tokens) by gathers; the last partial tile padded with zeros."""
    n = _TRANSPOSE
    stages = [_shuffle_stage(stage) for stage in range(4)]
    blocks = tile // n if tile % n == 0 else 0
    gathered = k if blocks == 0 else k % n

    @T.macro
    def swap_bits(src: Any, dst: Any, b: int, patterns: tuple[list[int], list[int]]) -> None:
        # rows i and i + b (bit b of i clear) exchange the lanes whose bit b is set
        for g in T.unroll(n // (2 * b)):
            for o in T.unroll(b):
                dst[g * 2 * b + o, T.Ramp(0, 1, n)] = T.Shuffle(
                    [src[g * 2 * b + o, T.Ramp(0, 1, n)], src[g * 2 * b + o + b, T.Ramp(0, 1, n)]],
                    patterns[0],
                )
                dst[g * 2 * b + o + b, T.Ramp(0, 1, n)] = T.Shuffle(
                    [src[g * 2 * b + o, T.Ramp(0, 1, n)], src[g * 2 * b + o + b, T.Ramp(0, 1, n)]],
                    patterns[1],
                )

    @T.macro
    def pack(X: Any, XT: Any) -> None:
        m = X.shape[0]
        for mo in T.parallel(m // tile):
            A = T.alloc_buffer((n, n), "float32", scope="local", annotations=_ON_STACK)
            B = T.alloc_buffer((n, n), "float32", scope="local", annotations=_ON_STACK)
            for vo in range(blocks):
                for kb in range(k // n):
                    for t in T.unroll(n):
                        A[t, T.Ramp(0, 1, n)] = X[mo * tile + vo * n + t, T.Ramp(kb * n, 1, n)]
                    swap_bits(A, B, 1, stages[0])
                    swap_bits(B, A, 2, stages[1])
                    swap_bits(A, B, 4, stages[2])
                    for o in T.unroll(8):
                        XT[mo, kb * n + o, T.Ramp(vo * n, 1, n)] = T.Shuffle(
                            [B[o, T.Ramp(0, 1, n)], B[o + 8, T.Ramp(0, 1, n)]], stages[3][0]
                        )
                        XT[mo, kb * n + o + 8, T.Ramp(vo * n, 1, n)] = T.Shuffle(
                            [B[o, T.Ramp(0, 1, n)], B[o + 8, T.Ramp(0, 1, n)]], stages[3][1]
                        )
            for kk in range(gathered):
                for t in T.vectorized(tile):
                    XT[mo, k - gathered + kk, t] = X[mo * tile + t, k - gathered + kk]
        for kk in range(k * T.min(m % tile, 1)):
            for t in range(tile):
                XT[m // tile, kk, t] = T.if_then_else(
                    T.int64(t) < m % tile, X[T.min(m - m % tile + t, m - 1), kk], T.float32(0)
                )

    return pack


def _task_index(groups: int, tile: int, chunk_tiles: int) -> tuple[Any, Any, Any]:
    """Index functions of the parallel tasks: (pass over ≤ chunk_tiles tiles) × group.

    Why functions, not TIR variables: a variable bound inside the parallel loop becomes a
    heap workspace per task in TVM 0.27's lowering.
    """

    def passes(m: Any) -> Any:
        return T.max((m // tile + chunk_tiles - 1) // chunk_tiles, 1)

    def pass_of(task: Any) -> Any:
        return task // groups

    def grp_of(task: Any) -> Any:
        return task % groups

    return passes, pass_of, grp_of


def _sub_rows(shape: BsrShape) -> int:
    """TOKEN: output features of a block computed per pass over its block row (≤ 4).

    Why: 4 features × 4 token vectors is 16 FMAs per 4 activation loads and 4 weight
    broadcasts; a whole 16-feature block in one pass fits only 1 token vector in the
    registers, one load per FMA, and the kernel runs load-bound.
    """
    sub = min(shape.r, _MAX_SUB_ROWS)
    while shape.r % sub:
        sub -= 1
    return sub


def _slab_rows(shape: BsrShape, lanes: int) -> int:
    """TOKEN: block rows per task, up to `_SLAB_ROW_FEATURES` output features (at least a
    vector's worth, so that each token's outputs are whole vector stores)."""
    rows = min(max(1, _SLAB_ROW_FEATURES // shape.r, lanes // shape.r), shape.block_rows)
    while shape.block_rows % rows:
        rows -= 1
    return rows


def slab_columns(shape: BsrShape) -> int:
    """TOKEN: block columns per slab of `SLAB_FEATURES` input features."""
    return max(1, SLAB_FEATURES // shape.c)


def slab_count(shape: BsrShape) -> int:
    """TOKEN: slabs of input features; the kernel's crow has slab_count · block_rows + 1."""
    return -(-(shape.in_features // shape.c) // slab_columns(shape))
