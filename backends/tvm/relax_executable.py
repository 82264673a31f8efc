"""A whole program compiled by TVM: Relax VM over a shared library, weights beside it.

Rules:
- `main` takes the user's input tensors, then the lifted weights (`params_io`); the VM's
  outputs are rebuilt into the traced output structure;
- a CUDA build keeps its weights on the GPU; its device code is compiled here with nvcc
  (`cuda_build`); with no CUDA device the build still completes and saves, and calling it
  raises BackendError with the reason (`notes` says so too);
- `save` writes the library with `export_library` and the weights with `save_params`;
- with a `TuningJob` (CPU only), `build` tunes the dense TIR functions first (`tuning`): the
  library then also holds `TUNED_ENTRY`, `main` specialised to the example input shapes
  with tuned schedules, which a call with exactly those shapes runs (`tuned_shapes`, saved
  and loaded with the build); `notes` says what was tuned and what was reused;
- every CPU build marks the VM's shape functions `tirx.noalias`: TVM 0.27's LLVM codegen
  otherwise drops `noalias` from every kernel built beside them (any dynamic-shape
  program), and a tuned [128, 768] × [768, 3072] matmul ran 52–80 ms instead of 8 ms.

Example:
    executable = RelaxExecutable.build(imported, target, "cpu", in_spec, out_spec, threads=2)
    y = executable(x)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm
import tvm_ffi
from torch.utils import _pytree as pytree
from tvm import relax
from tvm.target import Target

from sparsec.errors import BackendError

from ..base import dump_spec, flatten_inputs, unflatten_outputs
from .cuda_build import DEVICE_FILE, compile_device_code
from .importer import ImportedProgram
from .kernels import compile_config
from .params_io import LIBRARY_FILE, PARAMS_FILE, save_params
from .target import target_record
from .threads import set_threads
from .tuning import TUNED_ENTRY, TuneBudget, tune_module

__all__ = ["RelaxExecutable", "TuningJob", "compile_module"]


@dataclass(frozen=True)
class TuningJob:
    """What `RelaxExecutable.build` tunes for: a budget, a database folder, the input shapes."""

    budget: TuneBudget
    tuning_dir: Path | None
    input_shapes: tuple[tuple[int, ...], ...]


@tvm.transform.module_pass(opt_level=0, name="MarkShapeFunctionsNoAlias")
def _mark_shape_functions_noalias(
    module: tvm.IRModule, _context: tvm.transform.PassContext
) -> tvm.IRModule:
    """`tirx.noalias` on the VM's shape functions (one heap buffer: nothing can alias)."""
    updates = {}
    for gvar, func in module.functions.items():
        if (
            isinstance(func, tvm.tirx.PrimFunc)
            and func.attrs is not None
            and func.attrs.get("tirx.is_host_func", False)
            and "tirx.noalias" not in func.attrs
        ):
            updates[gvar] = func.with_attr("tirx.noalias", True)
    for gvar, func in updates.items():
        module[gvar] = func
    return module


def compile_module(module: tvm.IRModule, target: Target) -> tvm.runtime.Executable:
    """`tvm.compile` for a CPU target, or for CUDA with default GPU schedules for dense ops."""
    try:
        if target.kind.name == "cuda":
            from tvm.s_tir import dlight

            with target:
                module = relax.transform.LegalizeOps()(module)
                module = dlight.ApplyDefaultSchedule(
                    dlight.gpu.Matmul(),
                    dlight.gpu.GEMV(),
                    dlight.gpu.Reduction(),
                    dlight.gpu.GeneralReduction(),
                    dlight.gpu.Fallback(),
                )(module)
            return tvm.compile(module, target=target)
        # CPU: the sparse kernels' register accumulators need StorageRewrite off (kernels.py)
        pipeline = tvm.transform.Sequential(
            [relax.get_pipeline("default"), _mark_shape_functions_noalias]
        )
        with tvm.transform.PassContext(config=compile_config()):
            return tvm.compile(module, target=target, relax_pipeline=pipeline)
    except Exception as exc:  # TVM raises its own error types from C++
        raise BackendError(f"TVM could not compile the program for {target}: {exc}") from exc


def _device(target: Target) -> tvm.runtime.Device:
    return tvm.cuda(0) if target.kind.name == "cuda" else tvm.cpu(0)


class RelaxExecutable:
    """Runs a compiled Relax program with the TVM VM; call it like the traced module."""

    def __init__(
        self,
        library: tvm.runtime.Module | tvm.runtime.Executable,
        params: list[np.ndarray],
        num_inputs: int,
        record: dict[str, Any],
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        threads: int | None,
        notes: list[str],
        device_code: bytes | None = None,
        tuned_shapes: tuple[tuple[int, ...], ...] | None = None,
    ) -> None:
        self._library = library
        self._params = params
        self._num_inputs = num_inputs
        self._record = record
        self._in_spec = in_spec
        self._out_spec = out_spec
        self._threads = threads
        self.notes = notes
        self.device_code = device_code
        self.tuned_shapes = tuned_shapes
        self._vm: relax.VirtualMachine | None = None
        self._device_params: list[tvm.runtime.Tensor] = []
        self.target = Target(record["tvm_target"])

    @classmethod
    def build(
        cls,
        imported: ImportedProgram,
        target: Target,
        sparsec_target: str,
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        threads: int | None,
        tuning: TuningJob | None = None,
    ) -> RelaxExecutable:
        """Compile `imported` for `target`, tuning its dense functions first if asked."""
        module = imported.module
        notes = []
        tuned_shapes = None
        if tuning is not None:
            result = tune_module(
                module, target, tuning.budget, tuning.tuning_dir, tuning.input_shapes
            )
            module, tuned_shapes = result.module, result.tuned_shapes
            notes.append(result.note())
        library = compile_module(module, target)
        device_code = None
        if target.kind.name == "cuda":
            arch = str(target.attrs["arch"])
            device_code = compile_device_code(library, target)
            notes.append(
                f"CUDA device code compiled here with nvcc ({len(device_code)} bytes of fatbin for "
                f"{arch}, saved as {DEVICE_FILE}); the library itself carries the CUDA source, "
                "which TVM's runtime compiles with NVRTC on the GPU host (this TVM wheel can "
                "embed a binary only where the CUDA driver libcuda.so.1 is installed)"
            )
            if not tvm.cuda(0).exist:
                notes.append("not executed: this host has no CUDA device")
        return cls(
            library,
            list(imported.params),
            imported.num_inputs,
            target_record(target, sparsec_target),
            in_spec,
            out_spec,
            threads,
            notes,
            device_code,
            tuned_shapes,
        )

    @property
    def library(self) -> tvm.runtime.Module | tvm.runtime.Executable:
        """The compiled library (its imported modules hold the device code of a CUDA build)."""
        return self._library

    def _machine(self) -> relax.VirtualMachine:
        if self._vm is None:
            device = _device(self.target)
            if not device.exist:
                raise BackendError(
                    f"cannot run this TVM build: it targets {self.target.kind.name} and this "
                    "host has no such device. Fix: run it on a GPU host, or build for 'cpu'."
                )
            set_threads(self._threads)
            self._vm = relax.VirtualMachine(self._library, device)
            self._device_params = [tvm.runtime.tensor(value, device) for value in self._params]
        return self._vm

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        machine = self._machine()
        leaves = flatten_inputs(args, kwargs, self._in_spec)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if len(tensors) != self._num_inputs:
            raise BackendError(
                f"got {len(tensors)} input tensors, the TVM program takes {self._num_inputs}"
            )
        device = _device(self.target)
        inputs = [
            tvm.runtime.tensor(tensor.detach().cpu().contiguous().numpy(), device)
            for tensor in tensors
        ]
        tuned = self.tuned_shapes is not None and self.tuned_shapes == tuple(
            tuple(tensor.shape) for tensor in tensors
        )
        result = machine[TUNED_ENTRY if tuned else "main"](*inputs, *self._device_params)
        outputs = list(result) if isinstance(result, tvm_ffi.Array | list | tuple) else [result]
        return unflatten_outputs(
            [torch.from_numpy(value.numpy()) for value in outputs], self._out_spec
        )

    def files(self) -> tuple[str, ...]:
        device = (DEVICE_FILE,) if self.device_code is not None else ()
        return (LIBRARY_FILE, PARAMS_FILE, *device)

    def save(self, directory: Path) -> dict[str, Any]:
        staging = directory / LIBRARY_FILE
        try:
            self._library.export_library(str(staging))
        except Exception as exc:  # TVM raises its own error types from the linker call
            raise BackendError(f"TVM could not export the library {staging}: {exc}") from exc
        save_params(directory, self._params)
        if self.device_code is not None:
            (directory / DEVICE_FILE).write_bytes(self.device_code)
        return {
            "mode": "relax",
            "target": self._record,
            "threads": self._threads,
            "num_inputs": self._num_inputs,
            "num_params": len(self._params),
            "files": list(self.files()),
            "in_spec": dump_spec(self._in_spec),
            "out_spec": dump_spec(self._out_spec),
            "tuned_shapes": (
                [list(shape) for shape in self.tuned_shapes]
                if self.tuned_shapes is not None
                else None
            ),
        }
