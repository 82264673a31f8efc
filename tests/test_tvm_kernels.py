"""Each block-sparse TIR kernel equals the torch reference (fp32, atol 1e-4) across block
shapes, sparsities 0/50/90/100%, token counts 1, odd, one whole tile and past it (so the
whole-tile loops and every tail path run), both schedules where they apply, a narrow
vector, and weights wide enough for several slabs of the TOKEN kernel (slab-major order)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import tvm  # noqa: E402

from sparsec.backends.tvm.cuda_kernels import bsr_cuda_kernel  # noqa: E402
from sparsec.backends.tvm.isa import AVX2, AVX512, GENERIC, Isa, isa_of, isa_target, missing_here  # noqa: E402
from sparsec.backends.tvm.kernels import (  # noqa: E402
    BsrShape,
    Schedule,
    bsr_kernel,
    choose_schedule,
    compile_config,
    slab_count,
    token_vectors,
)
from sparsec.backends.tvm.partitioned import kernel_arrays  # noqa: E402
from sparsec.backends.tvm.slabs import slab_major  # noqa: E402
from sparsec.backends.tvm.target import build_target, host_target  # noqa: E402
from sparsec.backends.tvm.threads import set_threads  # noqa: E402
from sparsec.errors import BackendError  # noqa: E402

ATOL = 1e-4
OUT, IN = 48, 36
WIDE_IN = 600  # TOKEN: 3 slabs of 256 input features (2 for 1×4 blocks), ragged last slab
BLOCKS = [(16, 1), (8, 1), (4, 1), (1, 1), (1, 4), (4, 2), (2, 3), (48, 1)]
TOKENS = (1, 7, 16, 33, 64, 100, 300)  # 16: one FEATURE tile; 64: one TOKEN tile of 4×16
# lanes; 300: passes of 32 tokens (FEATURE, 2 tiles each) and of 128 (TOKEN, 2+2 tiles) and a tail
_LIBRARIES: dict[tuple[BsrShape, Schedule, Isa], tvm.runtime.Executable] = {}
HOST_ISA = isa_of(host_target())
# the x86 ISAs whose kernels are checked against torch: each runs where the host has it
ISA_PARAMS = [
    pytest.param(
        isa,
        id=isa.name,
        marks=pytest.mark.skipif(
            bool(missing_here(isa)),
            reason=f"this host's CPU lacks {isa.name}'s {missing_here(isa)}",
        ),
    )
    for isa in (AVX512, AVX2)
]


def _random_bsr(
    r: int, c: int, sparsity: float, seed: int, in_features: int = IN
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    keep = rng.random((OUT // r, in_features // c)) >= sparsity
    crow = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    cols = np.nonzero(keep)[1].astype(np.int64)
    values = rng.standard_normal((len(cols), r, c)).astype(np.float32)
    dense = np.zeros((OUT // r, r, in_features // c, c), np.float32)
    dense[np.repeat(np.arange(OUT // r), keep.sum(1)), :, cols, :] = values
    return values, cols, crow, dense.reshape(OUT, in_features)


def _library(shape: BsrShape, schedule: Schedule, isa: Isa) -> tvm.runtime.Executable:
    key = (shape, schedule, isa)
    if key not in _LIBRARIES:
        func = bsr_kernel(shape, schedule, isa).with_attr("global_symbol", "k")
        with tvm.transform.PassContext(config=compile_config()):
            _LIBRARIES[key] = tvm.compile(tvm.IRModule({"k": func}), target=isa_target(isa.name, 2))
    return _LIBRARIES[key]


def _operands(
    shape: BsrShape, schedule: Schedule, values: np.ndarray, cols: np.ndarray, crow: np.ndarray
) -> tuple[torch.Tensor, ...]:
    """The kernel's (values, cols, crow): compact, and slab-major for TOKEN kernels."""
    v, k = kernel_arrays(torch.tensor(values), torch.tensor(cols), shape)
    if schedule is Schedule.TOKEN:
        return slab_major(shape, v, k, torch.tensor(crow))
    return v, k, torch.tensor(crow)


# FEATURE vectorises one input column of r output features: r×1 blocks only
CASES = [
    (schedule, r, c)
    for schedule in Schedule
    for r, c in BLOCKS
    if schedule is Schedule.TOKEN or c == 1
]


def _check_kernel(
    schedule: Schedule, r: int, c: int, sparsity: float, in_features: int, isa: Isa = HOST_ISA
) -> None:
    isa = GENERIC if (r, c) == (2, 3) else isa  # also a narrow vector
    shape = BsrShape(OUT, in_features, r, c)
    library = _library(shape, schedule, isa)
    values, cols, crow, dense = _random_bsr(r, c, sparsity, r * 10 + c, in_features)
    v, k, p = _operands(shape, schedule, values, cols, crow)
    bias = torch.randn(OUT)
    for tokens in TOKENS:
        x = torch.randn(tokens, in_features)
        y = torch.empty(tokens, OUT)
        library["k"](x, v, k, p, bias, y)
        expected = torch.nn.functional.linear(x, torch.from_numpy(dense), bias)
        assert torch.allclose(y, expected, atol=ATOL), (tokens, (y - expected).abs().max())


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize(("schedule", "r", "c"), CASES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_kernel_matches_torch(
    schedule: Schedule, r: int, c: int, sparsity: float, isa: Isa
) -> None:
    _check_kernel(schedule, r, c, sparsity, IN, isa)


@pytest.mark.parametrize(("r", "c"), [(1, 1), (4, 1), (1, 4), (2, 3)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 1.0])
def test_token_kernel_over_several_slabs_matches_torch(r: int, c: int, sparsity: float) -> None:
    assert slab_count(BsrShape(OUT, WIDE_IN, r, c)) > 1
    _check_kernel(Schedule.TOKEN, r, c, sparsity, WIDE_IN)


def test_slab_major_order_keeps_each_row_in_order() -> None:
    shape = BsrShape(OUT, WIDE_IN, 1, 1)
    values, cols, crow, _ = _random_bsr(1, 1, 0.5, seed=0, in_features=WIDE_IN)
    v, k, p = slab_major(shape, *(torch.tensor(a) for a in (values.reshape(-1, 1, 1), cols, crow)))
    slabs, rows = slab_count(shape), OUT
    assert p.shape == (slabs * rows + 1,) and int(p[-1]) == len(cols)
    for s in range(slabs):
        for row in range(rows):
            block = k[int(p[s * rows + row]) : int(p[s * rows + row + 1])]
            expected = cols[crow[row] : crow[row + 1]]
            expected = expected[(expected >= 256 * s) & (expected < 256 * (s + 1))]
            assert block.tolist() == expected.tolist()
    # the values moved with their columns
    dense = torch.zeros(OUT, WIDE_IN)
    for s in range(slabs):
        for row in range(rows):
            span = slice(int(p[s * rows + row]), int(p[s * rows + row + 1]))
            dense[row, k[span]] = v[span, 0, 0]
    original = torch.zeros(OUT, WIDE_IN)
    original[np.repeat(np.arange(OUT), np.diff(crow)), cols] = torch.tensor(values).reshape(-1)
    assert torch.equal(dense, original)


def test_schedule_choice_follows_the_isa() -> None:
    assert choose_schedule(BsrShape(64, 64, 16, 1), AVX512) is Schedule.FEATURE
    assert choose_schedule(BsrShape(64, 64, 8, 1), AVX512) is Schedule.TOKEN
    assert choose_schedule(BsrShape(64, 64, 1, 1), AVX512) is Schedule.TOKEN
    # AVX2's 16 registers cannot hold a FEATURE tile: TOKEN for every block
    assert choose_schedule(BsrShape(64, 64, 8, 1), AVX2) is Schedule.TOKEN
    assert choose_schedule(BsrShape(64, 64, 16, 1), AVX2) is Schedule.TOKEN


def test_feature_schedule_refuses_wide_blocks() -> None:
    with pytest.raises(BackendError, match="r×1 blocks"):
        bsr_kernel(BsrShape(48, 36, 4, 2), Schedule.FEATURE, AVX512)


@pytest.mark.parametrize("isa", [AVX512, AVX2, GENERIC], ids=lambda isa: isa.name)
@pytest.mark.parametrize(("r", "c"), [*BLOCKS, (3, 1), (32, 1)])
def test_token_tile_fits_the_registers(r: int, c: int, isa: Isa) -> None:
    shape = BsrShape(96, 96, r, c)
    vectors = token_vectors(shape, isa)
    sub_rows = min(r, 4)
    assert 1 <= vectors <= 4 and sub_rows * vectors <= max(isa.accumulators, sub_rows)


@pytest.mark.parametrize("schedule", list(Schedule))
def test_kernels_keep_accumulators_on_the_stack(schedule: Schedule) -> None:
    """One heap workspace (the activation panel), none per block row for the accumulators.

    Why: without `compile_config()`, StorageRewrite turns the stack accumulators into heap
    workspaces, LLVM then stores every FMA's result to memory, and the kernels run 7-10x
    slower while staying correct; only the generated code shows it.
    """
    library = _library(BsrShape(OUT, IN, 16, 1), schedule, HOST_ISA)
    ll = library.mod.inspect_source("ll")
    assert ll.count("load ptr, ptr @__TVMBackendAllocWorkspace") == 1


def test_feature_kernel_fmas_take_broadcast_operands() -> None:
    """Checked on the generated code, so it holds on a host without AVX-512 too."""
    asm = _library(BsrShape(OUT, IN, 16, 1), Schedule.FEATURE, AVX512).mod.inspect_source("asm")
    assert asm.count("{1to16}") >= 16  # one FMA per token of a tile, activation broadcast
    assert "\tvperm" in asm and "zmm" in asm  # the register broadcasts (vpermps or vpermd)


def test_avx2_kernels_use_ymm_registers_only() -> None:
    asm = _library(BsrShape(OUT, IN, 16, 1), Schedule.TOKEN, AVX2).mod.inspect_source("asm")
    assert "vfmadd" in asm and "ymm" in asm and "zmm" not in asm


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_kernels_leave_the_callers_cpu_affinity_alone() -> None:
    """TVM must not pin the calling thread: torch and ORT threads would inherit one core."""
    before = os.sched_getaffinity(0)
    for threads in (1, 2):
        set_threads(threads)
        values, cols, crow, _ = _random_bsr(16, 1, 0.5, seed=3)
        v, k = kernel_arrays(torch.tensor(values), torch.tensor(cols), BsrShape(OUT, IN, 16, 1))
        library = _library(BsrShape(OUT, IN, 16, 1), Schedule.FEATURE, HOST_ISA)
        library["k"](
            torch.randn(33, IN), v, k, torch.tensor(crow), torch.zeros(OUT), torch.empty(33, OUT)
        )
        assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_thread_pool_can_use_every_core() -> None:
    """TVM's own default is half the hardware threads on x86: one worker on a 2-core VM."""
    script = (
        "import sparsec.backends.tvm, tvm_ffi;"
        "print(tvm_ffi.get_global_func('runtime.NumThreads')())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert int(result.stdout.split()[-1]) == len(os.sched_getaffinity(0))


def test_block_shape_must_tile_the_weight() -> None:
    with pytest.raises(BackendError, match="do not tile"):
        BsrShape(48, 36, 5, 1)


def test_cuda_kernel_builds() -> None:
    func = bsr_cuda_kernel(BsrShape(OUT, IN, 4, 1)).with_attr("global_symbol", "k")
    library = tvm.compile(tvm.IRModule({"k": func}), target=build_target("cuda", 1))
    assert library is not None
