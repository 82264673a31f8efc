"""`sparsec.compile()`: trace → pass pipeline → backend, with a measured report.

Rules:
- the user's model is never modified: it is traced in eval mode (restored afterwards) and
  every rewrite replaces tensors instead of editing them;
- `compiled.module` is the user's own module tree with the graph's decisions applied
  (`sparsec.materialize`): it trains in training mode and shares its tensors with the graph;
  where that is impossible it is the graph module, and the report says why;
- a model that cannot be traced whole is compiled by its largest traceable parts
  (`sparsec.parts`), unless a backend other than torch was asked for;
- an executable is rebuilt before saving when the graph's weights changed after lowering
  (fine-tuning `compiled.module`), so a saved artifact never pairs old code with new weights;
- without `example_inputs`, compilation happens on the first call, with that call's inputs;
- after lowering, the backend's outputs are compared with the pruned torch graph on the
  example inputs and the max error goes into the report;
- the backend is the Backend object given to compile() (its options win), else the one the
  pipeline names, built with the pipeline's `backend_options`, else the target's default;
  a default backend that cannot lower the graph (ONNX export fails) falls back to torch,
  with the reason in the report; a backend the user named raises its error instead.

Example:
    compiled = sparsec.compile(model, (x,), target="cpu", pipeline="structured-50")
    y = compiled(x)
    print(compiled.report.to_markdown())
    compiled.save("artifacts/model")
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsec import hf
from sparsec.backends.base import (
    MIN_EXPORT_OPSET,
    Backend,
    BackendOptions,
    Executable,
    available_backends,
    default_backend,
    gate_latency_model,
    get_backend,
)
from sparsec.calibration import Calibration
from sparsec.config import PipelineSpec, did_you_mean, resolve_pipeline
from sparsec.errors import BackendError, ConfigError, MaterializeError, SparsecError, TraceError
from sparsec.frontends import trace
from sparsec.frontends.onnx import OnnxModule, OnnxProgram, is_onnx_source, trace_onnx
from sparsec.frontends.onnx.load import OnnxSource
from sparsec.ir import Graph
from sparsec.ir.inputs import normalize_inputs
from sparsec.materialize import Materialized, materialize
from sparsec.metrics import count_macs, layer_widths
from sparsec.parts import CompiledParts, compile_parts
from sparsec.passes.analysis.dependency_groups import DependencyGroups
from sparsec.passes.rewrite.prune_channels import PruneChannelsSummary
from sparsec.pipeline import (
    AnalysisManager,
    Instrument,
    IRDump,
    NumericCheck,
    Pass,
    PassFilter,
    PassManager,
    PassResult,
    Pipeline,
    Statistics,
    Timing,
    VerifyEach,
    max_abs_diff,
)
from sparsec.report import ModelStats, Report
from sparsec.signature import check_inputs

__all__ = ["CompiledModel", "compile"]

Progress = Callable[[str], None]
Tracer = Callable[[Any, bool], Graph]  # (example inputs, dynamic) → Graph


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def _stats(graph: Graph) -> ModelStats:
    return ModelStats(graph.num_parameters(), count_macs(graph), graph.num_nodes(), tuple(layer_widths(graph)))


def weights_key(graph: Graph) -> tuple[tuple[str, int, int], ...]:
    """Identity and in-place version of every graph tensor: changes when training does."""
    return tuple(
        (name, id(tensor), tensor._version)
        for name, tensor in graph.module.state_dict(keep_vars=True).items()
    )


@dataclass
class _Build:
    graph: Graph
    executable: Executable
    report: Report
    pipeline: Pipeline
    backend: Backend
    options: BackendOptions
    lowered_from: tuple[tuple[str, int, int], ...]
    tree: Materialized | MaterializeError

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def relower_if_trained(self, progress: Progress) -> None:
        """Lower again if the weights changed since the executable was built from them."""
        if weights_key(self.graph) == self.lowered_from:
            return
        progress(f"weights changed since lowering: rebuilding the {self.backend.name} executable")
        self.executable = self.backend.lower(self.graph, self.pipeline.target, self.options)
        self.lowered_from = weights_key(self.graph)
        self.report.notes.append(
            "the executable was rebuilt after the weights changed (fine-tuning compiled.module)"
        )


def _materialize(model: torch.nn.Module, graph: Graph, progress: Progress) -> Materialized | MaterializeError:
    if isinstance(model, OnnxModule):
        return MaterializeError("the model was imported from ONNX, so there is no module tree of the user's to put it back into")
    progress(f"materializing the pruned graph into {type(model).__name__}")
    try:
        tree = materialize(model, graph)
    except MaterializeError as exc:
        return exc
    if hf.is_transformers_model(tree.module):
        hf.adopt_standard_config(tree.module)
    return tree


def _module_note(tree: Materialized | MaterializeError, model: torch.nn.Module) -> str:
    if isinstance(tree, MaterializeError):
        return f"compiled.module is the graph module (trains in eval mode only): {tree}"
    return (
        f"compiled.module is a {type(model).__name__} with the pruned widths "
        f"(max deviation from the graph {tree.max_error:.2g}): it trains, saves and exports"
    )


def _group_rows(
    am: AnalysisManager, graph: Graph, results: list[tuple[Pass, PassResult | None]]
) -> list[dict[str, Any]]:
    """Group table rows: from the last prune-channels summary, else the analysis."""
    for _, result in reversed(results):
        if result is not None and isinstance(result.summary, PruneChannelsSummary):
            return list(result.summary.groups)
    if not am.is_cached(DependencyGroups()):
        return []
    deps = am.get(DependencyGroups())
    return [
        {
            "index": g.index,
            "layers": ", ".join(g.layers),
            "before": len(g.units),
            "after": len(g.units),
            "frozen": next(iter(g.frozen_units.values()), ""),
        }
        for g in deps.groups
    ]


def _resolve_auto_gates(pipeline: Pipeline, backend: str | None) -> Pipeline:
    """Passes with `cost_model=auto` get the cost model of the kernels that will run the
    sparse ops (`gate_latency_model`); the report's pipeline then names the model used."""
    model = gate_latency_model(pipeline.target, backend)
    passes = tuple(
        dataclasses.replace(p, cost_model=model)  # type: ignore[type-var]
        if getattr(p, "cost_model", None) == "auto"
        else p
        for p in pipeline.passes
    )
    return Pipeline(passes, pipeline.target, pipeline.backend, pipeline.backend_options)


def _build(
    model: torch.nn.Module,
    example_inputs: Any,
    pipeline: Pipeline,
    options: BackendOptions,
    verify_each: bool,
    dump_ir: Path | None,
    progress: Progress,
    calibration: Calibration | None,
    given_backend: Backend | None = None,
    dynamic: bool = True,
    tracer: Tracer | None = None,
    pass_filter: PassFilter | None = None,
) -> _Build:
    progress(f"tracing {_model_name(model)}")
    phases = _Phases()
    with phases("trace"), _eval_mode(model), torch.no_grad():
        if tracer is None:
            args, kwargs = normalize_inputs(example_inputs)
            graph = trace(model, kwargs or args, dynamic=dynamic)
        else:
            graph = tracer(example_inputs, dynamic)
        reference = graph.module(*graph.example_args, **graph.example_kwargs)
    for note in graph.notes:
        progress(note)
    before = _stats(graph)
    timing, stats, numeric = Timing(), Statistics(), NumericCheck(reference)
    instruments: list[Instrument] = [timing, stats, numeric]
    if pass_filter is not None:  # first: a skipped entry reaches no other instrument
        pass_filter = dataclasses.replace(pass_filter)
        instruments.insert(0, pass_filter)
    if verify_each:
        instruments.append(VerifyEach())
    if dump_ir is not None:
        instruments.append(IRDump(Path(dump_ir)))

    def on_pass(index: int, total: int, p: Pass) -> None:
        if index < total:
            progress(f"pass {index + 1}/{total}: {p}")

    named = given_backend.name if given_backend is not None else pipeline.backend
    pipeline = _resolve_auto_gates(pipeline, named)
    am = AnalysisManager(graph, calibration)
    with phases("passes"), torch.no_grad():
        run = PassManager(pipeline, instruments, progress=on_pass).run(graph, am)
    if given_backend is not None:
        backend, reason = given_backend, "given to compile() with its options"
    elif pipeline.backend:
        backend, reason = _named_backend(pipeline), "named in the pipeline"
        if pipeline.backend_options is not None:
            reason += " with its backend_options"
    else:
        backend, reason = default_backend(pipeline.target, graph)
    with phases("materialize"):
        tree = _materialize(model, graph, progress)
    progress(f"lowering to {backend.name} for {pipeline.target}")
    chosen = given_backend is not None or bool(pipeline.backend)
    # the backend's lowering passes are timed and dumped like the pipeline's
    lowering = tuple(i for i in instruments if isinstance(i, (Timing, IRDump)))
    options = dataclasses.replace(options, instruments=lowering)
    with phases("lower"):
        try:
            executable = backend.lower(graph, pipeline.target, options)
        except BackendError as exc:
            if chosen or backend.name == "torch":
                raise  # the user asked for this backend: its error is the answer
            first = str(exc).splitlines()[0][:300]
            reason = f"{reason}; {backend.name} failed ({first}), so the torch backend runs it"
            progress(f"{backend.name} failed; falling back to torch")
            backend = get_backend("torch")
            executable = backend.lower(graph, pipeline.target, options)
    lowered_from = weights_key(graph)
    with phases("numeric check"), torch.no_grad():
        backend_error = max_abs_diff(
            executable(*graph.example_args, **graph.example_kwargs),
            graph.module(*graph.example_args, **graph.example_kwargs),
        )
    report = Report(
        model=_model_name(model),
        target=pipeline.target,
        backend=backend.name,
        pipeline=str(pipeline),
        before=before,
        after=_stats(graph),
        phase_times=list(phases.records),
        pass_times=list(timing.records),
        pass_stats=list(stats.records),
        pass_deviation=list(numeric.records),
        groups=_group_rows(am, graph, run.results),
        pass_summaries=[
            (str(p), r.summary.to_dict())
            for p, r in run.results
            if r is not None and r.summary is not None
        ],
        unruled_ops=am.get(DependencyGroups()).unruled_ops if am.is_cached(DependencyGroups()) else {},
        backend_error=backend_error,
        backend_reason=reason,
        notes=[
            *graph.notes,
            *([] if pipeline.passes else ["the pipeline has no passes: the model was compiled as it is"]),
            *[f"pass {entry} did not run: {why}" for entry, why in (pass_filter.records if pass_filter else [])],
            _module_note(tree, model),
            *getattr(executable, "notes", []),
        ],
    )
    return _Build(graph, executable, report, pipeline, backend, options, lowered_from, tree)


def _pass_filter(
    pipeline: Pipeline, skip: Sequence[str], stop_after: str | None
) -> PassFilter | None:
    """The PassFilter for compile()'s `skip_passes` / `stop_after`; ConfigError for a name
    that is not in the pipeline (a typo would otherwise run everything)."""
    if isinstance(skip, str):
        skip = [skip]
    if not skip and stop_after is None:
        return None
    names = [p.name for p in pipeline.passes]
    for name in [*skip, *([stop_after] if stop_after is not None else [])]:
        if name not in names:
            raise ConfigError(
                f"pass {name!r} is not in the pipeline {pipeline}; {did_you_mean(name, names)}"
            )
    return PassFilter(skip=frozenset(skip), stop_after=stop_after)


class _Phases:
    """Wall-clock seconds of each phase of a build, for the report."""

    def __init__(self) -> None:
        self.records: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.records.append((name, time.perf_counter() - start))


def _model_name(model: torch.nn.Module) -> str:
    """The class name, or the file name of an imported ONNX model."""
    return model.display_name if isinstance(model, OnnxModule) else type(model).__name__


def _named_backend(pipeline: Pipeline) -> Backend:
    """The backend the pipeline names, constructed with its options when it has any."""
    backend = get_backend(str(pipeline.backend))
    if pipeline.backend_options is None:
        return backend
    # resolve_pipeline checked that the options are this backend's options class
    named: Backend = type(backend)(pipeline.backend_options)  # type: ignore[call-arg]
    return named


def _given_options(backend: Backend) -> Any:
    """The options object a given Backend carries (e.g. TvmBackend.options), if a dataclass."""
    options = getattr(backend, "options", None)
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return options
    return None


class CompiledModel:
    """A compiled model: call it like the original; `.module` is the pruned model to train."""

    def __init__(
        self,
        model: torch.nn.Module,
        pipeline: Pipeline,
        options: BackendOptions,
        verify_each: bool,
        dump_ir: Path | None,
        progress: Progress,
        calibration: Calibration | None = None,
        given_backend: Backend | None = None,
        dynamic: bool = True,
        tracer: Tracer | None = None,
        pass_filter: PassFilter | None = None,
    ) -> None:
        self._model = model
        self._pass_filter = pass_filter
        self._tracer = tracer
        self._given_backend = given_backend
        self._pipeline = pipeline
        self._options = options
        self._verify_each = verify_each
        self._dump_ir = dump_ir
        self._progress = progress
        self._calibration = calibration
        self._dynamic = dynamic
        self._build: _Build | None = None

    def compile_with(self, example_inputs: Any) -> CompiledModel:
        """Compile now on `example_inputs` (done automatically at the first call)."""
        self._build = _build(
            self._model, example_inputs, self._pipeline, self._options,
            self._verify_each, self._dump_ir, self._progress, self._calibration,
            self._given_backend, self._dynamic, self._tracer, self._pass_filter,
        )
        return self

    @property
    def compiled(self) -> bool:
        return self._build is not None

    def _built(self) -> _Build:
        if self._build is None:
            raise SparsecError(
                "this model is not compiled yet: call it once on real inputs, or pass "
                "example_inputs= to sparsec.compile()"
            )
        return self._build

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._build is None:
            self.compile_with(kwargs if kwargs and not args else args)
        build = self._built()
        check_inputs(build.graph.input_specs, args, kwargs)
        build.relower_if_trained(self._progress)
        return build.executable(*args, **kwargs)

    @property
    def graph(self) -> Graph:
        return self._built().graph

    @property
    def module(self) -> torch.nn.Module:
        """The pruned model: the user's module tree (see `to_module`), else the graph module.

        The report's notes say which, and why when it is the graph module.
        """
        tree = self._built().tree
        return tree.module if isinstance(tree, Materialized) else self._built().graph.module

    def to_module(self) -> torch.nn.Module:
        """The pruned model as the user's own classes; MaterializeError says why it cannot be.

        It is a normal module: `.train()`/`.eval()` switch dropout and BatchNorm, every
        parameter trains, `state_dict()` keys are the original names, and it shares its
        tensors with `compiled.graph`, so `save()` ships what was trained.
        """
        tree = self._built().tree
        if isinstance(tree, MaterializeError):
            raise tree
        return tree.module

    @property
    def report(self) -> Report:
        return self._built().report

    @property
    def executable(self) -> Executable:
        return self._built().executable

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline as it ran (`cost_model=auto` resolved), or as given before the build."""
        return self._build.pipeline if self._build is not None else self._pipeline

    def save_pretrained(
        self, directory: str | Path, *, tokenizer: str | Path | None = None, overwrite: bool = False
    ) -> hf.SavedCheckpoint:
        """Write a Hugging Face checkpoint of the pruned model (see `sparsec.hf`).

        `tokenizer`: a directory whose tokenizer files are copied alongside. The result says
        whether plain transformers loads it, and why not when it cannot
        (`sparsec.hf.from_pretrained` loads either kind).
        """
        tree = self._built().tree
        if isinstance(tree, MaterializeError):
            raise tree
        return hf.save_pretrained(tree.module, tree.record, directory, tokenizer=tokenizer, overwrite=overwrite)

    def save(self, directory: str | Path) -> Path:
        """Write a deployable artifact directory (atomically); returns its path.

        If the weights changed since lowering (fine-tuning `module`), the executable is
        rebuilt from them first.
        """
        from sparsec.artifact import write_artifact

        build = self._built()
        build.relower_if_trained(self._progress)
        return write_artifact(
            Path(directory),
            graph=build.graph,
            executable=build.executable,
            backend_name=build.backend_name,
            target=build.pipeline.target,
            pipeline=build.pipeline.to_dict(),
            report_markdown=build.report.to_markdown(),
            report=build.report.to_dict(),
        )


def _default_progress() -> Progress:
    """Progress lines on stderr when it is a terminal; silence in pipes, logs and tests."""
    if sys.stderr.isatty():
        return lambda message: print(f"sparsec: {message}", file=sys.stderr, flush=True)
    return lambda message: None


def compile(  # noqa: A001 - the public name mirrors torch.compile
    model: torch.nn.Module | OnnxSource,
    example_inputs: Any = None,
    *,
    target: str | None = None,
    pipeline: PipelineSpec = None,
    backend: str | Backend | None = None,
    backend_options: Mapping[str, Any] | None = None,
    threads: int | None = None,
    verify_each: bool = True,
    dump_ir: str | Path | None = None,
    progress: Progress | None = None,
    calibration: Calibration | Iterable[Any] | None = None,
    dynamic: bool = True,
    skip_passes: Sequence[str] = (),
    stop_after: str | None = None,
) -> CompiledModel | CompiledParts:
    """Compile `model` for `target` ("cpu" or "cuda") with `pipeline` (preset, file or object).

    `model`: a torch module, or an ONNX model (a path ending in .onnx, or an
    onnx.ModelProto; `sparsec.frontends.onnx`). An ONNX model keeps its input and output
    names, dynamic axes and (from 18 up) opset in the ONNX it is lowered to; without
    `example_inputs` they are made from its declared input types.

    `example_inputs`: a tensor, a tuple of positional inputs or a dict of keyword inputs;
    without it, compilation happens at the first call. `calibration`: batches (or a
    `Calibration` with a loss) for data-aware passes. `backend`: a name, or a backend
    object carrying its own options, e.g. `TvmBackend(TvmOptions(mode=TvmMode.RELAX,
    tune_trials=64))`. `backend_options`: options by name for the named backend, merged over
    the pipeline file's `backend_options` table, e.g. `{"mode": "relax", "tune_trials": 64}`.
    A model that cannot be traced whole (a detector's data-dependent post-processing) is
    compiled by parts: its largest traceable submodules, put back into a copy of it
    (`sparsec.parts`; the torch backend runs it). `progress(message)` receives a line per step (default: printed to stderr when it is a
    terminal). `dynamic=False` traces the example's exact shapes (for models that fix their sizes);
    by default the batch, and the sequence of integer inputs, stay dynamic.
    `skip_passes` / `stop_after`: pass names (as in the pipeline) to leave out, or after
    which to stop, to find which pass causes a problem; the report says what did not run.
    """
    tracer: Tracer | None = None
    opset: int | None = None
    if is_onnx_source(model):
        program = OnnxProgram(model)  # type: ignore[arg-type]  # refuses a bad file first

        opset = max(program.module.opset, MIN_EXPORT_OPSET)

        def tracer(inputs: Any, dynamic_dims: bool) -> Graph:
            graph = trace_onnx(program, inputs, dynamic=dynamic_dims)
            if opset != program.module.opset:
                graph.notes = (
                    *graph.notes,
                    f"ONNX written by the backends is opset {opset}, not the file's "
                    f"{program.module.opset}: torch.onnx's exporter writes opset "
                    f"{MIN_EXPORT_OPSET} and later",
                )
            return graph

        model = program.module
        example_inputs = program.example_inputs() if example_inputs is None else example_inputs
    elif not isinstance(model, torch.nn.Module):
        raise TraceError(
            f"sparsec.compile takes a torch.nn.Module, an .onnx path or an onnx.ModelProto, not "
            f"{type(model).__name__}"
        )
    given_backend = None if backend is None or isinstance(backend, str) else backend
    if given_backend is not None and not isinstance(given_backend, Backend):
        raise ConfigError(
            f"backend must be a name or a Backend object, not {type(backend).__name__}; "
            f"valid names: {', '.join(available_backends())}"
        )
    if given_backend is not None and backend_options:
        raise ConfigError(
            "backend_options= and a Backend object were both given; the object carries its "
            f"own options. Fix: put them in the object, or pass backend={given_backend.name!r}"
        )
    if given_backend is None:
        resolved = resolve_pipeline(
            pipeline, target=target, backend=backend, backend_options=backend_options
        )
    else:
        # the object wins over the pipeline's backend and options; what it carries is what
        # runs, so it is what the manifest records
        resolved = resolve_pipeline(pipeline, target=target)
        resolved = Pipeline(
            resolved.passes,
            target=resolved.target,
            backend=given_backend.name,
            backend_options=_given_options(given_backend),
        )
    calibration_data = (
        calibration
        if isinstance(calibration, Calibration) or calibration is None
        else Calibration(calibration)
    )
    pass_filter = _pass_filter(resolved, skip_passes, stop_after)
    compiled = CompiledModel(
        model,
        resolved,
        BackendOptions(threads=threads, opset=opset, calibration=calibration_data),
        verify_each,
        Path(dump_ir) if dump_ir is not None else None,
        progress or _default_progress(),
        calibration_data,
        given_backend,
        dynamic,
        tracer,
        pass_filter,
    )
    if example_inputs is None:
        return compiled
    try:
        compiled.compile_with(example_inputs)
    except TraceError as exc:
        if tracer is not None or given_backend is not None or resolved.backend not in (None, "torch"):
            raise  # parts run eagerly in torch: a named backend cannot take them
        progress_fn = progress or _default_progress()
        progress_fn("the whole model cannot be traced; compiling its traceable parts")
        part_pipeline = Pipeline(resolved.passes, target=resolved.target, backend="torch")

        def compile_part(module: torch.nn.Module, inputs: Any) -> CompiledModel:
            progress_fn(f"compiling part {type(module).__name__}")
            return compile(module, inputs, pipeline=part_pipeline, threads=threads,
                           verify_each=verify_each, dynamic=dynamic)

        return compile_parts(model, example_inputs, compile_part, str(exc))
    return compiled
