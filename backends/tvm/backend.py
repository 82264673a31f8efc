"""The "tvm" backend: our block-sparse TIR kernels, with the dense remainder partitioned or in TVM.

Rules:
- `TvmMode.PARTITIONED` (the default for "cpu", chosen by measurement: see
  benchmarks/tvm_e2e.py): torch runs the dense ops, TVM kernels the sparse linears;
- `TvmMode.RELAX` (and always for "cuda"): the whole program is imported into Relax
  (`importer`) and compiled by TVM; on CPU its dense ops are untuned loops, which is why it
  is not the default; for CUDA, dense ops get dlight's default GPU schedules;
- the target is LLVM for this host's CPU (mcpu detected and recorded) or CUDA, whose device
  code is compiled here by nvcc (see `cuda_build` for what is embedded and why); with no
  GPU the CUDA build completes and says that it did not run;
- a saved build records its target; `load` refuses one this host cannot run (ArtifactError).

Example:
    executable = TvmBackend().lower(graph, "cpu", BackendOptions(threads=2))
    y = executable(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import tvm
from torch.utils import _pytree as pytree

from sparsec.errors import ArtifactError, BackendError

from ..base import TARGETS, BackendOptions, Diagnostic, Executable, Severity, load_spec
from ..torch_backend import load_program
from .importer import import_graph
from .params_io import LIBRARY_FILE, load_params
from .partitioned import KERNELS_FILE, PartitionedExecutable, sparse_nodes
from .relax_executable import RelaxExecutable
from .target import DEFAULT_CUDA_ARCH, build_target, check_loadable

if TYPE_CHECKING:
    from sparsec.ir.graph import Graph

__all__ = ["TvmBackend", "TvmMode", "TvmOptions"]


class TvmMode(Enum):
    """Who runs the dense ops: torch (partitioned) or TVM (the whole program in Relax)."""

    PARTITIONED = "partitioned"
    RELAX = "relax"


@dataclass(frozen=True)
class TvmOptions:
    """TVM-specific lowering options.

    Rules:
    - `mode`: see TvmMode; "cuda" always compiles the whole program (RELAX);
    - `cuda_arch`: the GPU architecture device code is compiled for ("sm_80", "sm_90").
    """

    mode: TvmMode = TvmMode.PARTITIONED
    cuda_arch: str = DEFAULT_CUDA_ARCH

    def __post_init__(self) -> None:
        if not isinstance(self.mode, TvmMode):
            raise BackendError(f"TvmOptions.mode must be a TvmMode, not {self.mode!r}")
        if not (self.cuda_arch.startswith("sm_") and self.cuda_arch[3:].isdigit()):
            raise BackendError(
                f"TvmOptions.cuda_arch must look like 'sm_80', not {self.cuda_arch!r}"
            )


class TvmBackend:
    """Apache TVM: block-sparse TIR kernels for the sparse linears; LLVM or CUDA code."""

    name = "tvm"

    def __init__(self, options: TvmOptions | None = None) -> None:
        self.options = options or TvmOptions()

    def supports(self, target: str) -> bool:
        return target in TARGETS

    def check(self, graph: Graph) -> list[Diagnostic]:
        diagnostics = []
        output = next(node for node in graph.module.graph.nodes if node.op == "output")
        for index, leaf in enumerate(pytree.tree_leaves(output.args[0])):
            if not (isinstance(leaf, fx.Node) and isinstance(leaf.meta.get("val"), torch.Tensor)):
                diagnostics.append(
                    Diagnostic(
                        Severity.ERROR,
                        f"output {index} ({leaf!r}) is not a tensor; the TVM VM returns "
                        "tensors only. Fix: return only tensors from forward().",
                    )
                )
        if not sparse_nodes(graph.module):
            diagnostics.append(
                Diagnostic(
                    Severity.WARNING,
                    "the graph has no sparse linear ops: TVM has nothing to add over ONNX "
                    "Runtime here (partitioned mode refuses it; relax mode runs untuned dense "
                    "loops). Fix: run lower-sparse-weights, or use the onnxruntime backend.",
                )
            )
        return diagnostics

    def lower(self, graph: Graph, target: str, options: BackendOptions) -> Executable:
        if not self.supports(target):
            raise BackendError(
                f"the tvm backend has no target {target!r}; valid targets: {TARGETS}"
            )
        errors = [d for d in self.check(graph) if d.severity is Severity.ERROR]
        if errors:
            raise BackendError(
                "the tvm backend cannot lower this graph:\n" + "\n".join(f"  {d}" for d in errors)
            )
        tvm_target = build_target(target, options.threads, self.options.cuda_arch)
        if target == "cpu" and self.options.mode is TvmMode.PARTITIONED:
            return PartitionedExecutable.build(
                graph.module, graph.export_program, tvm_target, options.threads
            )
        try:
            program = graph.export_program()
        except Exception as exc:  # torch.export raises many types; all mean "not re-exportable"
            raise BackendError(f"torch.export could not re-export the graph: {exc}") from exc
        imported = import_graph(program, tvm_target)
        return RelaxExecutable.build(
            imported,
            tvm_target,
            target,
            program.call_spec.in_spec,
            program.call_spec.out_spec,
            options.threads,
        )

    def load(self, directory: Path, metadata: dict[str, Any]) -> Executable:
        record = metadata.get("target")
        if not isinstance(record, dict):
            raise ArtifactError(f"the TVM metadata of {directory} records no target; re-export it")
        check_loadable(record)
        mode = metadata.get("mode")
        if mode == TvmMode.PARTITIONED.value:
            library = _load_library(directory / KERNELS_FILE)
            program = load_program(directory)
            return PartitionedExecutable(
                program.module(), library, lambda: program, record, metadata.get("threads")
            )
        if mode == TvmMode.RELAX.value:
            library = _load_library(directory / LIBRARY_FILE)
            return RelaxExecutable(
                library,
                load_params(directory, int(metadata["num_params"])),
                int(metadata["num_inputs"]),
                record,
                load_spec(metadata["in_spec"]),
                load_spec(metadata["out_spec"]),
                metadata.get("threads"),
                [],
            )
        raise ArtifactError(f"unknown TVM build mode {mode!r} in {directory}; re-export it")


def _load_library(path: Path) -> tvm.runtime.Module:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing from the artifact; re-export it")
    try:
        return tvm.runtime.load_module(str(path))
    except Exception as exc:  # the loader raises TVM errors for a foreign or broken library
        raise ArtifactError(
            f"TVM could not load {path}: {exc}. Fix: rebuild on this host."
        ) from exc
