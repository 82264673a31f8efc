"""The "onnxruntime" backend: export the graph to ONNX (dynamo exporter) and run it with ORT.

Rules:
- the graph is re-exported (`graph.export_program()`) and converted with
  `torch.onnx.export(..., dynamo=True)`; dynamic dims keep the names the front end gave them
  (`batch`, `seq`); ONNX inputs are named after `graph.input_specs`, outputs after
  `graph.output_names`, and dynamic output dims after `graph.output_dims` (an imported
  ONNX model's own names);
- `model.onnx` is one self-contained file; a model whose weights pass ONNX's 2 GB limit gets
  its weights in `model.onnx.data` beside it;
- the executable flattens a call's inputs like the traced module does, feeds the tensors to
  the ONNX inputs in order, and rebuilds the traced output structure from ORT's outputs;
- target "cuda" asks for ORT's CUDA provider; where it is missing the session runs on CPU
  and `notes` says so;
- `OrtOptions.quantize` ("dynamic" or "static") turns the exported model into INT8 with
  ORT's own tools (`ort_quantize`); the manifest records how, and loading runs it as saved.

Example:
    executable = OnnxRuntimeBackend().lower(graph, "cpu", BackendOptions(threads=2))
    out = executable(x)
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from sparsec.errors import BackendError, ConfigError
from sparsec.ops.onnx import ONNX_TRANSLATIONS

from .base import (
    TARGETS,
    BackendOptions,
    Diagnostic,
    Executable,
    Severity,
    dump_spec,
    flatten_inputs,
    load_spec,
    require_lowerable,
    unflatten_outputs,
)
from .ort_quantize import CalibrateMethod, Quantize, quantize_model

if TYPE_CHECKING:
    from sparsec.ir.graph import Graph

__all__ = ["MODEL_FILE", "OnnxRuntimeBackend", "OnnxRuntimeExecutable", "OrtOptions"]

MODEL_FILE = "model.onnx"
_EXTERNAL_DATA_FILE = MODEL_FILE + ".data"  # where ONNXProgram.save puts weights over 2 GB
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_ORT_LOG_ERRORS_ONLY = 3


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime lowering options (`backend_options` of "onnxruntime").

    Rules:
    - `quantize`: "none" (fp32), "dynamic" (INT8 weights, activations per call: no data
      needed; transformer linears) or "static" (INT8 QDQ with activation ranges from
      compile()'s `calibration`); see `ort_quantize`;
    - `calibrate_method` ("minmax", "entropy", "percentile"), `calibration_batches` (how many
      batches the calibrator reads, >= 1) and `per_channel` (weights' scales per output
      channel) refine quantization; the first two only apply to "static".
    """

    quantize: Quantize = Quantize.NONE
    calibrate_method: CalibrateMethod = CalibrateMethod.MINMAX
    calibration_batches: int = 16
    per_channel: bool = True

    def __post_init__(self) -> None:
        for name, kind in (("quantize", Quantize), ("calibrate_method", CalibrateMethod)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except ValueError:
                    valid = ", ".join(member.value for member in kind)
                    raise ConfigError(
                        f"OrtOptions.{name} must be one of {valid}, not {value!r}"
                    ) from None
        if not isinstance(self.calibration_batches, int) or self.calibration_batches < 1:
            raise ConfigError(
                f"OrtOptions.calibration_batches must be an int >= 1, not "
                f"{self.calibration_batches!r}"
            )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress logs and warnings; errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _session(
    path: Path, target: str, threads: int | None
) -> tuple[ort.InferenceSession, list[str]]:
    """An ORT session for `target`, and notes on what it could not honour."""
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_LOG_ERRORS_ONLY
    if threads is not None:
        options.intra_op_num_threads = threads
    notes: list[str] = []
    providers = [_CPU]
    if target == "cuda":
        if _CUDA in ort.get_available_providers():
            providers.insert(0, _CUDA)
        else:
            notes.append(
                "onnxruntime's CUDA provider is not installed (install onnxruntime-gpu); ran on CPU"
            )
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own untyped errors
        raise BackendError(f"ONNX Runtime could not load {path}: {exc}") from exc
    if target == "cuda" and not notes and _CUDA not in session.get_providers():
        notes.append("onnxruntime's CUDA provider failed to start (no GPU?); ran on CPU")
    return session, notes


class OnnxRuntimeExecutable:
    """An ORT session over `model.onnx` that takes and returns what the traced module does."""

    def __init__(
        self,
        source: Path,
        files: tuple[str, ...],
        in_spec: pytree.TreeSpec,
        out_spec: pytree.TreeSpec,
        target: str,
        threads: int | None,
        owner: tempfile.TemporaryDirectory[str] | None = None,
        quantization: dict[str, Any] | None = None,
    ) -> None:
        self._source = source
        self._quantization = quantization
        self._files = files
        self._in_spec = in_spec
        self._out_spec = out_spec
        self._target = target
        self._threads = threads
        self._owner = owner  # keeps a lowering's temporary directory alive with the executable
        self._session, self.notes = _session(source / MODEL_FILE, target, threads)
        self._input_names = [value.name for value in self._session.get_inputs()]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves = flatten_inputs(args, kwargs, self._in_spec)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        if len(tensors) != len(self._input_names):
            raise BackendError(
                f"got {len(tensors)} input tensors, the ONNX model takes {len(self._input_names)}: "
                f"{self._input_names}"
            )
        feed = {}
        for name, tensor in zip(self._input_names, tensors, strict=True):
            if tensor.dtype == torch.bfloat16:
                raise BackendError(
                    f"input {name!r} is bfloat16, which ONNX Runtime's numpy interface cannot "
                    "take; cast it to float32 or float16"
                )
            feed[name] = tensor.detach().cpu().contiguous().numpy()
        try:
            outputs = self._session.run(None, feed)
        except Exception as exc:  # ORT raises its own untyped errors
            raise BackendError(
                f"ONNX Runtime failed to run {self._source / MODEL_FILE}: {exc}"
            ) from exc
        return unflatten_outputs([torch.from_numpy(value) for value in outputs], self._out_spec)

    def files(self) -> tuple[str, ...]:
        return self._files

    def save(self, directory: Path) -> dict[str, Any]:
        for name in self._files:
            shutil.copyfile(self._source / name, directory / name)
        return {
            "target": self._target,
            "threads": self._threads,
            "files": list(self._files),
            "in_spec": dump_spec(self._in_spec),
            "out_spec": dump_spec(self._out_spec),
            **({"quantization": self._quantization} if self._quantization else {}),
        }


def _output_leaves(graph: Graph) -> list[Any]:
    output = next(node for node in graph.module.graph.nodes if node.op == "output")
    return pytree.tree_leaves(output.args[0])


def _dim_names(
    onnx_program: torch.onnx.ONNXProgram, graph: Graph
) -> dict[str | ir.SymbolicDim, str]:
    """Map the exporter's symbols (s77) to the front end's dim names (batch) by position."""
    mapping: dict[str | ir.SymbolicDim, str] = {}
    for value, spec in zip(onnx_program.model.graph.inputs, graph.input_specs, strict=False):
        for dim, name in zip(value.shape or (), spec.shape, strict=False):
            if isinstance(dim, ir.SymbolicDim) and dim.value and isinstance(name, str):
                mapping[dim.value] = name
    return mapping


def _name_output_dims(onnx_program: torch.onnx.ONNXProgram, graph: Graph) -> None:
    """Dynamic output dims take the names an imported ONNX model gave them."""
    for value, names in zip(onnx_program.model.graph.outputs, graph.output_dims, strict=False):
        if value.shape is None or len(value.shape) != len(names):
            continue
        dims = [
            ir.SymbolicDim(name) if name is not None and isinstance(dim, ir.SymbolicDim) else dim
            for dim, name in zip(value.shape, names, strict=True)
        ]
        value.shape = ir.Shape(dims)


def _free_interface_names(onnx_program: torch.onnx.ONNXProgram) -> None:
    """Rename inner values that carry an input's or output's name.

    The exporter names outputs as asked without checking inner values, so an output named
    `linear` (as an imported model's may be) can collide with the graph's own `linear`
    node; ONNX Runtime then refuses the model ("Duplicate definition of name").
    """
    model = onnx_program.model.graph
    interface = {id(v) for v in (*model.inputs, *model.outputs)}
    taken = {v.name for v in (*model.inputs, *model.outputs) if v.name}
    inner = [v for node in model.all_nodes() for v in node.outputs]
    used = {v.name for v in inner if v.name} | set(model.initializers)
    for value in inner:
        if value.name in taken and id(value) not in interface:
            suffix = 1
            while f"{value.name}_{suffix}" in used | taken:
                suffix += 1
            used.add(f"{value.name}_{suffix}")
            value.name = f"{value.name}_{suffix}"


def _export(
    graph: Graph, directory: Path, opset: int | None
) -> tuple[tuple[str, ...], pytree.TreeSpec, pytree.TreeSpec]:
    """Write `model.onnx` (and its data file if over 2 GB); return the files and call specs."""
    try:
        with _quiet():
            program = graph.export_program()
    except Exception as exc:  # torch.export raises many types; all mean "not re-exportable"
        raise BackendError(f"torch.export could not re-export the graph: {exc}") from exc
    try:
        with _quiet():
            onnx_program = torch.onnx.export(
                program,
                (),
                input_names=[spec.name for spec in graph.input_specs],
                output_names=list(graph.output_names),
                opset_version=opset,
                dynamo=True,
                verbose=False,
                optimize=True,
                custom_translation_table=ONNX_TRANSLATIONS,
            )
            if onnx_program is None:
                raise BackendError("torch.onnx.export returned no program")
            onnx_program.rename_axes(_dim_names(onnx_program, graph))
            _name_output_dims(onnx_program, graph)
            _free_interface_names(onnx_program)
            onnx_program.save(directory / MODEL_FILE)
    except BackendError:
        raise
    except Exception as exc:  # the exporter raises many types; the message names the op
        raise BackendError(
            f"torch.onnx.export failed: {_innermost_causes(exc)}\nFix: run "
            "OnnxRuntimeBackend().check(graph) for ops ONNX cannot express, or use the torch "
            "backend."
        ) from exc
    files = tuple(name for name in (MODEL_FILE, _EXTERNAL_DATA_FILE) if (directory / name).exists())
    return files, program.call_spec.in_spec, program.call_spec.out_spec


def _innermost_causes(exc: BaseException) -> str:
    """The exporter's top error is generic; the node and the missing op are in its causes."""
    chain: list[BaseException] = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 8:
        chain.append(cause)
    lines = [
        f"{type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}" for e in chain[-2:]
    ]
    return re.sub(r"\x1b\[[0-9;]*m", "", "; ".join(reversed(lines)))


def _verify_io(graph: Graph, path: Path, out_spec: pytree.TreeSpec) -> None:
    """The ONNX inputs and outputs must line up one to one with the traced program's."""
    model = onnx.load(str(path), load_external_data=False)
    onnx_inputs = [value.name for value in model.graph.input]
    expected = [spec.name for spec in graph.input_specs]
    flat = pytree.tree_leaves((graph.example_args, graph.example_kwargs))
    tensors = sum(1 for leaf in flat if isinstance(leaf, torch.Tensor))
    if onnx_inputs != expected or len(onnx_inputs) != tensors:
        raise BackendError(
            f"the ONNX model's inputs {onnx_inputs} do not match the traced program's "
            f"{expected} ({tensors} input tensors); an input the model does not use may have "
            "been dropped by the exporter"
        )
    if len(model.graph.output) != out_spec.num_leaves:
        raise BackendError(
            f"the ONNX model has {len(model.graph.output)} outputs, the traced program returns "
            f"{out_spec.num_leaves}"
        )


class OnnxRuntimeBackend:
    """ONNX Runtime: the embedded default for "cpu", and ORT's CUDA provider for "cuda"."""

    name = "onnxruntime"

    def __init__(self, options: OrtOptions | None = None) -> None:
        self.options = options or OrtOptions()

    def supports(self, target: str) -> bool:
        return target in TARGETS

    def check(self, graph: Graph) -> list[Diagnostic]:
        diagnostics = []
        for index, leaf in enumerate(_output_leaves(graph)):
            if not (isinstance(leaf, fx.Node) and isinstance(leaf.meta.get("val"), torch.Tensor)):
                diagnostics.append(
                    Diagnostic(
                        Severity.ERROR,
                        f"output {index} ({leaf!r}) is not a tensor; ONNX outputs must be "
                        "tensors. Fix: return only tensors from forward().",
                    )
                )
        for node in graph.module.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                namespace = node.target.namespace
                if namespace not in ("aten", "prims"):
                    diagnostics.append(
                        Diagnostic(
                            Severity.WARNING,
                            f"%{node.name} calls {node.target.name()}, which "
                            "torch.onnx can export only if the op decomposes into ATen ops",
                        )
                    )
        return diagnostics

    def lower(self, graph: Graph, target: str, options: BackendOptions) -> Executable:
        require_lowerable(self, graph, target)
        owner = tempfile.TemporaryDirectory(prefix="sparsec-onnx-")
        source = Path(owner.name)
        try:
            files, in_spec, out_spec = _export(graph, source, options.opset)
            _verify_io(graph, source / MODEL_FILE, out_spec)
            record, notes = self._quantize(graph, source, files, options)
            executable = OnnxRuntimeExecutable(
                source, files, in_spec, out_spec, target, options.threads, owner, record
            )
            executable.notes.extend(notes)
            return executable
        except BaseException:
            owner.cleanup()
            raise

    def _quantize(
        self, graph: Graph, source: Path, files: tuple[str, ...], options: BackendOptions
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """INT8 in place of `model.onnx` when `OrtOptions.quantize` asks for it."""
        if self.options.quantize is Quantize.NONE:
            return None, []
        if _EXTERNAL_DATA_FILE in files:
            raise BackendError(
                "INT8 quantization of a model whose weights pass ONNX's 2 GB limit is not "
                "supported yet. Fix: compile with quantize=none, or prune it under 2 GB first."
            )
        return quantize_model(
            source / MODEL_FILE,
            mode=self.options.quantize,
            method=self.options.calibrate_method,
            per_channel=self.options.per_channel,
            batches=self.options.calibration_batches,
            calibration=options.calibration,
            specs=graph.input_specs,
            input_names=[spec.name for spec in graph.input_specs],
        )

    def load(self, directory: Path, metadata: dict[str, Any]) -> Executable:
        executable = OnnxRuntimeExecutable(
            directory,
            tuple(metadata["files"]),
            load_spec(metadata["in_spec"]),
            load_spec(metadata["out_spec"]),
            str(metadata["target"]),
            metadata.get("threads"),
            quantization=metadata.get("quantization"),
        )
        if metadata.get("quantization"):
            executable.notes.append(f"INT8 model, quantized by ONNX Runtime: {metadata['quantization']}")
        return executable
