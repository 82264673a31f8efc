"""The vector instruction sets the CPU kernels are generated for: one record each, read from the target.

Rules:
- an `Isa` holds everything the kernel generator (`kernels`) reads about the CPU: fp32 lanes
  per vector, the accumulator registers a TOKEN kernel may keep live, whether the FEATURE
  schedule is used where a block fills whole vectors, and whether the AVX-512 register
  broadcast (vpermps) applies; nothing else in the kernels depends on the ISA, so a new
  vector unit (ARM NEON: 4 lanes, 32 registers) needs a record and a measurement here, not a
  new kernel;
- `isa_of(target)` is the widest ISA the target's LLVM CPU has (AVX-512 > AVX2 > generic);
- `isa_target(name, threads)` is the host's own target when the host has that ISA, and
  otherwise LLVM's portable CPU of that level (`x86-64-v3`, `x86-64-v4`): code that compiles
  here but runs only on a host with the ISA's features (`missing_here` says what is missing);
- the figures behind each record were measured on the CPU named there, 90% blocks, 128
  tokens, 1 thread, all variants in one process and interleaved (benchmarks/tvm_sparse.py).

Example:
    isa_of(host_target())                    # AVX2 on a Zen 3, AVX512 on a Zen 4
    target = isa_target("avx2", threads=2)   # the host, or mcpu=x86-64-v3
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tvm.target import Target, codegen

from sparsec.errors import BackendError

__all__ = ["AVX2", "AVX512", "GENERIC", "ISAS", "Isa", "isa_of", "isa_target", "missing_here"]


@dataclass(frozen=True)
class Isa:
    """What the block-sparse kernels need to know about a CPU's vector unit (module rules)."""

    name: str
    lanes: int
    accumulators: int
    feature_schedule: bool
    register_broadcasts: bool
    portable_cpu: str
    features: tuple[str, ...]


# AVX-512: 32 zmm registers, so 16 accumulators leave room for the operands; the FEATURE
# schedule and its vpermps broadcasts were measured on Zen 5 (kernels.choose_schedule)
AVX512 = Isa("avx512", 16, 16, True, True, "x86-64-v4", ("avx2", "avx512bw", "avx512f", "fma"))
# AVX2: 16 ymm registers. 16 accumulators spill: 16×1 at 90%, 768 → 3072, Zen 3: 2.11 ms
# with 16, 1.03 with 8 (sub-rows 4 × 2 vectors), 12 (3 vectors) runs 8× slower (a 24-token
# tile is packed by gathers); FEATURE (16 tokens × 2 vectors of accumulators) 1.71 ms, and
# 1.25 vs 1.02 for 8×1; at 1024 tokens, 2 threads: 10.6 vs 4.0 ms (16×1)
AVX2 = Isa("avx2", 8, 8, False, False, "x86-64-v3", ("avx2", "fma"))
# SSE-only x86 (and the reference for a 4-lane unit): 16 xmm registers
GENERIC = Isa("generic", 4, 8, False, False, "x86-64", ())

ISAS = {isa.name: isa for isa in (AVX512, AVX2, GENERIC)}


def _lacks(target: Target, features: tuple[str, ...]) -> list[str]:
    with target:
        return [f for f in features if not codegen.llvm_cpu_has_features([f], target)]


def isa_of(target: Target) -> Isa:
    """The widest ISA the CPU of `target` (or of a GPU target's host) has."""
    cpu = target.host if target.kind.name != "llvm" and target.host is not None else target
    for isa in (AVX512, AVX2):
        if not _lacks(cpu, isa.features):
            return isa
    return GENERIC


def _host() -> Target:
    return Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())})


def missing_here(isa: Isa) -> list[str]:
    """The features of `isa` this host lacks (empty: code built for `isa` runs here)."""
    return _lacks(_host(), isa.features)


def isa_target(name: str, threads: int | None = None) -> Target:
    """An LLVM target for ISA `name`: this host's when it has that ISA, else the portable CPU."""
    isa = ISAS.get(name)
    if isa is None:
        raise BackendError(f"unknown ISA {name!r}; known: {', '.join(ISAS)}")
    cores = threads if threads is not None else len(os.sched_getaffinity(0))
    host = _host()
    mcpu = str(host.attrs["mcpu"]) if isa_of(host) == isa else isa.portable_cpu
    return Target({"kind": "llvm", "mcpu": mcpu, "num-cores": cores})
