"""The "tvm" backend: our block-sparse TIR kernels, with the dense remainder partitioned or in TVM.

Rules:
- `TvmMode.PARTITIONED` (the default for "cpu", chosen by measurement: see
  benchmarks/tvm_e2e.py): torch runs the dense ops, TVM kernels the sparse linears;
- `TvmMode.RELAX` (and always for "cuda"): the whole program is imported into Relax
  (`importer`) and compiled by TVM; on CPU its dense ops are untuned loops, which is why it
  is not the default (unless tuned: still 1.9–3.9× slower than ORT at 64 trials); for
  CUDA, dense ops get dlight's default GPU schedules;
- both modes fuse chains of two sparse linears (and an activation) on CPU (`layout`);
- the target is LLVM for this host's CPU (mcpu detected and recorded) or CUDA, whose device
  code is compiled here by nvcc (see `cuda_build` for what is embedded and why); with no
  GPU the CUDA build completes and says that it did not run;
- a saved build records its target; `load` refuses one this host cannot run (ArtifactError);
- `tune_trials > 0` (RELAX mode, "cpu") tunes the dense TIR functions with meta-schedule for
  the graph's example input shapes before compiling (`tuning`); records persist in
  `tuning_dir`, so a second compile of the same workload reuses them and tunes nothing;
  the executable's `notes` (and the report) say what was tuned and what was reused.

Example:
    executable = TvmBackend().lower(graph, "cpu", BackendOptions(threads=2))
    y = executable(x)
    tuned = TvmBackend(TvmOptions(mode=TvmMode.RELAX, tune_trials=64)).lower(graph, "cpu", ...)
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
from sparsec.frontends import program_graph
from sparsec.program_files import load_program

from ..base import (
    TARGETS,
    BackendOptions,
    Diagnostic,
    Executable,
    Severity,
    flatten_inputs,
    load_spec,
    require_lowerable,
)
from .dense_only import DENSE_MODE, load_dense, lower_dense
from .importer import import_graph
from .params_io import LIBRARY_FILE, load_params
from .partitioned import KERNELS_FILE, PartitionedExecutable, sparse_nodes
from .relax_executable import RelaxExecutable, TuningJob
from .target import DEFAULT_CUDA_ARCH, build_target, check_loadable
from .tuning import SearchStrategy, TuneBudget, check_seconds

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
    - `cuda_arch`: the GPU architecture device code is compiled for ("sm_80", "sm_90");
    - `tune_trials`: meta-schedule candidates measured per compile (0: no tuning); needs
      `mode=TvmMode.RELAX` and target "cpu"; only tasks without records are tuned;
    - `dense_threads`: torch's threads for the dense ops in PARTITIONED mode (None: the
      same as `threads`); 1 by default because torch's OpenMP workers spin after each op
      and take the cores TVM's kernels need next (4-layer BERT-base, 2 threads, batch 8:
      61.8 ms with 1 vs 102.6 ms with 2; batch 1: 7.7 vs 9.0 ms; benchmarks/tvm_e2e.py);
    - `tune_trials_per_task` (None: an even share), `tune_search` and `tuning_dir` (None:
      `tuning.DEFAULT_TUNING_DIR`, ~/.cache/sparsec/tvm-tuning) refine tuning and need
      `tune_trials > 0`;
    - `tune_seconds` (None: no limit) caps tuning's wall-clock time as well as its trials, for
      a compile that must end in time whatever the model (`TuneBudget.seconds`: no round
      starts after it, so it may overshoot by the rounds in flight); needs `tune_trials > 0`.
    """

    mode: TvmMode = TvmMode.PARTITIONED
    cuda_arch: str = DEFAULT_CUDA_ARCH
    dense_threads: int | None = 1
    tune_trials: int = 0
    tune_trials_per_task: int | None = None
    tune_search: SearchStrategy = SearchStrategy.EVOLUTIONARY
    tuning_dir: Path | None = None
    tune_seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mode, TvmMode):
            raise BackendError(f"TvmOptions.mode must be a TvmMode, not {self.mode!r}")
        if not (self.cuda_arch.startswith("sm_") and self.cuda_arch[3:].isdigit()):
            raise BackendError(
                f"TvmOptions.cuda_arch must look like 'sm_80', not {self.cuda_arch!r}"
            )
        dense = self.dense_threads
        if dense is not None and (
            isinstance(dense, bool) or not isinstance(dense, int) or dense < 1
        ):
            raise BackendError(
                f"TvmOptions.dense_threads must be an int >= 1 or None, not {dense!r}"
            )
        trials = self.tune_trials
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
            raise BackendError(
                f"TvmOptions.tune_trials must be an int >= 0 (0: no tuning), not {trials!r}"
            )
        if isinstance(self.tuning_dir, str):
            object.__setattr__(self, "tuning_dir", Path(self.tuning_dir))
        if self.tuning_dir is not None and not isinstance(self.tuning_dir, Path):
            raise BackendError(
                f"TvmOptions.tuning_dir must be a Path or None, not {self.tuning_dir!r}"
            )
        check_seconds(self.tune_seconds, "TvmOptions.tune_seconds")
        if trials == 0:
            refinements = [
                name
                for name, value, default in (
                    ("tune_trials_per_task", self.tune_trials_per_task, None),
                    ("tune_search", self.tune_search, SearchStrategy.EVOLUTIONARY),
                    ("tuning_dir", self.tuning_dir, None),
                    ("tune_seconds", self.tune_seconds, None),
                )
                if value != default
            ]
            if refinements:
                raise BackendError(
                    f"TvmOptions sets {', '.join(refinements)} but tune_trials is 0, so "
                    "nothing is tuned. Fix: set tune_trials (e.g. 64), or drop them."
                )
            return
        if self.mode is not TvmMode.RELAX:
            raise BackendError(
                f"TvmOptions.tune_trials={trials} needs mode=TvmMode.RELAX: in {self.mode.value} "
                "mode torch runs the dense ops, so TVM has nothing to tune. Fix: "
                "TvmOptions(mode=TvmMode.RELAX, tune_trials=...)."
            )
        self.tune_budget()  # TuneBudget validates the rest, naming the field

    def tune_budget(self) -> TuneBudget | None:
        """The TuneBudget these options ask for, or None when tuning is off."""
        if self.tune_trials == 0:
            return None
        try:
            return TuneBudget(
                self.tune_trials,
                self.tune_trials_per_task,
                search=self.tune_search,
                seconds=self.tune_seconds,
            )
        except BackendError as exc:
            raise BackendError(f"TvmOptions: {exc}") from exc


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
                    "Runtime here (partitioned mode hands the program to ONNX Runtime; RELAX "
                    "mode builds untuned dense loops). Fix: run lower-sparse-weights, or use "
                    "the onnxruntime backend.",
                )
            )
        return diagnostics

    def lower(self, graph: Graph, target: str, options: BackendOptions) -> Executable:
        require_lowerable(self, graph, target)
        budget = self.options.tune_budget()
        if budget is not None and target != "cpu":
            raise BackendError(
                f"meta-schedule tuning is for target 'cpu', not {target!r}: measuring GPU "
                "candidates needs the GPU, and CUDA dense ops get dlight's default schedules. "
                "Fix: TvmOptions(tune_trials=0) for 'cuda'."
            )
        tvm_target = build_target(target, options.threads, self.options.cuda_arch)
        if target == "cpu" and self.options.mode is TvmMode.PARTITIONED:
            if not sparse_nodes(graph.module):
                return lower_dense(graph, target, options)  # asked for by name: it builds
            return PartitionedExecutable.build(
                graph,
                tvm_target,
                options.threads,
                self.options.dense_threads,
                options=options,
            )
        try:
            program = graph.export_program()
        except Exception as exc:  # torch.export raises many types; all mean "not re-exportable"
            raise BackendError(f"torch.export could not re-export the graph: {exc}") from exc
        imported = import_graph(program, tvm_target, fuse_chains=True)  # CPU only
        tuning = None
        if budget is not None:
            leaves = flatten_inputs(
                graph.example_args, graph.example_kwargs, program.call_spec.in_spec
            )
            shapes = tuple(
                tuple(int(d) for d in leaf.shape)
                for leaf in leaves
                if isinstance(leaf, torch.Tensor)
            )
            tuning = TuningJob(budget, self.options.tuning_dir, shapes)
        executable = RelaxExecutable.build(
            imported,
            tvm_target,
            target,
            program.call_spec.in_spec,
            program.call_spec.out_spec,
            options.threads,
            tuning,
        )
        return executable

    def load(self, directory: Path, metadata: dict[str, Any]) -> Executable:
        if metadata.get("mode") == DENSE_MODE:
            return load_dense(directory, metadata)
        record = metadata.get("target")
        if not isinstance(record, dict):
            raise ArtifactError(f"the TVM metadata of {directory} records no target; re-export it")
        check_loadable(record)
        mode = metadata.get("mode")
        if mode == TvmMode.PARTITIONED.value:
            library = _load_library(directory / KERNELS_FILE)
            program = load_program(directory)
            return PartitionedExecutable.with_library(
                program_graph(program),
                library,
                lambda: program,
                record,
                metadata.get("threads"),
                metadata.get("dense_threads"),
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
                tuned_shapes=_tuned_shapes(metadata.get("tuned_shapes")),
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


def _tuned_shapes(record: Any) -> tuple[tuple[int, ...], ...] | None:
    if record is None:
        return None
    if not (
        isinstance(record, list)
        and all(
            isinstance(shape, list) and all(isinstance(d, int) for d in shape) for shape in record
        )
    ):
        raise ArtifactError(
            f"the TVM metadata's tuned_shapes {record!r} is malformed; re-export it"
        )
    return tuple(tuple(shape) for shape in record)
