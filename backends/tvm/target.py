"""TVM targets for sparsec's "cpu" and "cuda", built from what this host is, and checked on load.

Rules:
- "cpu" is LLVM for the host: `mcpu` is `llvm_get_system_cpu()` (TVM's `"native"` silently
  means generic, and the mcpu is worth 2–5× on these kernels), `num-cores` the thread count;
- "cuda" is CUDA for `arch` (default sm_80) with that same LLVM host for the host-side code;
- a saved build records its target and the ISA its kernels were generated for (`isa`);
  `check_loadable` refuses one this host cannot run (another architecture, another ISA or
  missing vector features, a CUDA build without a CUDA device, or another sparsec target),
  naming both.

Example:
    target = build_target("cpu", threads=2)       # {"kind": "llvm", "mcpu": "znver5", ...}
    check_loadable(target_record(target))         # raises ArtifactError elsewhere
"""

from __future__ import annotations

import os
from typing import Any

import tvm
from tvm.target import Target, codegen

from sparsec.errors import ArtifactError, BackendError

from .isa import ISAS, isa_of, missing_here

__all__ = [
    "DEFAULT_CUDA_ARCH",
    "build_target",
    "check_loadable",
    "host_cpu",
    "host_target",
    "target_record",
]

DEFAULT_CUDA_ARCH = "sm_80"
# features whose absence makes code built for another mcpu crash with SIGILL
_CHECKED_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "neon", "sve")


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. "znver4", "skylake-avx512")."""
    return str(codegen.llvm_get_system_cpu())


def host_target(threads: int | None = None) -> Target:
    """LLVM for this host's CPU, with `threads` cores (default: all this process may use)."""
    cores = threads if threads is not None else len(os.sched_getaffinity(0))
    return Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": cores})


def build_target(target: str, threads: int | None = None, cuda_arch: str | None = None) -> Target:
    """The TVM target for sparsec's `target` ("cpu" or "cuda")."""
    host = host_target(threads)
    if target == "cpu":
        return host
    if target == "cuda":
        arch = cuda_arch or DEFAULT_CUDA_ARCH
        return Target({"kind": "cuda", "arch": arch, "host": host.export()})
    raise BackendError(f"the tvm backend has no target {target!r}; valid targets: cpu, cuda")


def _cpu_features(mcpu: str) -> list[str]:
    target = Target({"kind": "llvm", "mcpu": mcpu})
    with target:
        features = codegen.llvm_get_cpu_features(target)
    return sorted(feature for feature in _CHECKED_FEATURES if feature in features)


def target_record(target: Target, sparsec_target: str) -> dict[str, Any]:
    """JSON-safe description of a build's target, saved in the artifact's manifest."""
    cpu = target.host if target.kind.name != "llvm" and target.host is not None else target
    mcpu = str(cpu.attrs.get("mcpu", "generic"))
    return {
        "sparsec_target": sparsec_target,
        "tvm_target": str(target),
        "kind": target.kind.name,
        "mcpu": mcpu,
        "cpu_features": _cpu_features(mcpu),
        "isa": isa_of(target).name,
        "triple": str(codegen.llvm_get_system_triple()),
        "arch": str(target.attrs["arch"]) if "arch" in target.attrs else None,
        "tvm_version": tvm.__version__,
    }


def check_loadable(record: dict[str, Any], requested: str | None = None) -> None:
    """Refuse (ArtifactError) a build this host cannot run, or one built for another target."""
    built_for = record.get("sparsec_target")
    if requested is not None and built_for != requested:
        raise ArtifactError(
            f"this TVM artifact was built for target {built_for!r}, not {requested!r}. "
            f"Fix: rebuild it with target={requested!r}."
        )
    built_triple = str(record.get("triple", ""))
    host_triple = str(codegen.llvm_get_system_triple())
    if built_triple.split("-")[0] != host_triple.split("-")[0]:
        raise ArtifactError(
            f"this TVM artifact holds code for {built_triple!r}; this host is {host_triple!r}. "
            "Fix: rebuild the artifact on (or for) this host."
        )
    if record.get("kind") == "cuda" and not tvm.cuda(0).exist:
        raise ArtifactError(
            f"this TVM artifact was built for CUDA ({record.get('arch')}) and this host has no "
            "CUDA device. Fix: load it on a GPU host, or rebuild it with target='cpu'."
        )
    isa = ISAS.get(str(record.get("isa")))
    if isa is not None and (lacking := missing_here(isa)):
        raise ArtifactError(
            f"this TVM artifact holds kernels for {isa.name} (features {lacking}), "
            f"which this host ({host_cpu()!r}, {isa_of(host_target()).name}) lacks; running "
            "it would crash with an illegal instruction. Fix: rebuild the artifact on this "
            "host (sparsec.compile, or `sparsec compile`), which picks its kernels for the "
            "host's ISA."
        )
    missing = sorted(set(record.get("cpu_features", [])) - set(_cpu_features(host_cpu())))
    if missing:
        raise ArtifactError(
            f"this TVM artifact was built for CPU {record.get('mcpu')!r}, whose features "
            f"{missing} this host ({host_cpu()!r}) lacks; running it would crash with an "
            "illegal instruction. Fix: rebuild the artifact on (or for) this host."
        )
