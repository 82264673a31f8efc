"""Runs a Pipeline over a Graph: analyses through the cache, rewrites with instruments.

Rules:
- analyses listed in a pipeline are computed eagerly and chosen for their role;
- after each rewrite the analysis cache keeps only what the pass preserved;
- a failing pass raises PassError naming the pass, the passes before it, and the cause.

Example:
    pm = PassManager(Pipeline([MagnitudeImportance(), PruneChannels(ratio=0.5)]),
                     instruments=[Timing(), VerifyEach()])
    results = pm.run(graph)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from sparsec.errors import ConfigError, PassError, SparsecError
from sparsec.ir import Graph
from sparsec.pipeline.analysis_manager import AnalysisManager
from sparsec.pipeline.base import Analysis, Pass, PassResult, PassSummary, RewritePass, format_pass
from sparsec.pipeline.instruments import Instrument

__all__ = ["Pipeline", "PassManager", "PipelineRun", "options_dict"]


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of passes plus where the result goes (target, backend, backend options).

    `backend_options` is the named backend's typed options object (a frozen dataclass such
    as `TvmOptions`), or None for the backend's defaults; it needs a `backend`.
    """

    passes: tuple[Pass, ...] = ()
    target: str = "cpu"
    backend: str | None = None
    backend_options: Any = None

    def __init__(
        self,
        passes: Iterable[Pass] = (),
        target: str = "cpu",
        backend: str | None = None,
        backend_options: Any = None,
    ) -> None:
        if backend_options is not None:
            if backend is None:
                raise ConfigError(
                    f"backend options {type(backend_options).__name__} need a backend; "
                    "name it: Pipeline(..., backend='tvm', backend_options=...)"
                )
            if not dataclasses.is_dataclass(backend_options) or isinstance(backend_options, type):
                raise ConfigError(
                    "backend_options must be the backend's options object (a dataclass such "
                    f"as TvmOptions), not {type(backend_options).__name__}"
                )
        passes = tuple(passes)
        wrong = [p for p in passes if not isinstance(p, Pass)]
        if wrong:
            raise ConfigError(
                f"Pipeline takes pass objects, not {type(wrong[0]).__name__} {wrong[0]!r}. Fix: "
                "build them (sparsec.passes.MagnitudeImportance()), or pass the pipeline as text "
                "to compile(pipeline='magnitude-importance,prune-channels{ratio=0.3}')"
            )
        object.__setattr__(self, "passes", passes)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "backend_options", backend_options)

    def __str__(self) -> str:
        return "pipeline(" + ",".join(format_pass(p) for p in self.passes) + ")"

    def to_dict(self) -> dict[str, Any]:
        """The resolved pipeline as plain data (stored in every artifact)."""
        return {
            "target": self.target,
            "backend": self.backend,
            "backend_options": options_dict(self.backend_options),
            "passes": [{"name": p.name, **_plain(p.options())} for p in self.passes],
            "text": str(self),
        }


def options_dict(options: Any) -> dict[str, Any] | None:
    """A backend options object as plain data: every field, enums as values, paths as strings."""
    if options is None:
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, PurePath):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if hasattr(value, "value"):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


@dataclass
class PipelineRun:
    """What a run did: each entry's result, in order, the entries an instrument skipped,
    and the analysis manager."""

    results: list[tuple[Pass, PassResult | None]] = field(default_factory=list)
    analyses: AnalysisManager | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r is not None and r.changed for _, r in self.results)


class PassManager:
    """Runs a Pipeline's passes in order over one Graph."""

    def __init__(
        self,
        pipeline: Pipeline | Sequence[Pass],
        instruments: Sequence[Instrument] = (),
        progress: Callable[[int, int, Pass], None] | None = None,
    ) -> None:
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
        self.instruments = list(instruments)
        self.progress = progress

    def run(self, graph: Graph, am: AnalysisManager | None = None) -> PipelineRun:
        am = am or AnalysisManager(graph)
        run = PipelineRun(analyses=am)
        done: list[str] = []
        total = len(self.pipeline.passes)
        for index, p in enumerate(self.pipeline.passes):
            if not all(inst.should_run(p, graph) for inst in self.instruments):
                run.skipped.append(str(p))
                continue
            if self.progress:
                self.progress(index, total, p)
            for inst in self.instruments:
                inst.before(p, graph)
            try:
                result = self._run_one(p, graph, am)
                for inst in self.instruments:
                    inst.after(p, graph, result)
            except SparsecError as exc:
                raise type(exc)(f"in pass {p} (passes before it: {done or 'none'}): {exc}") from exc
            except Exception as exc:
                raise PassError(
                    f"pass {p} failed (passes before it: {done or 'none'}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            run.results.append((p, result))
            done.append(str(p))
        if self.progress and total:
            self.progress(total, total, self.pipeline.passes[-1])
        return run

    @staticmethod
    def _run_one(p: Pass, graph: Graph, am: AnalysisManager) -> PassResult | None:
        if isinstance(p, Analysis):
            am.get(p)
            am.choose(p)
            return None
        if isinstance(p, RewritePass):
            version = graph.version
            result = p.run(graph, am)
            if not isinstance(result, PassResult):
                raise PassError(f"pass {p} returned {type(result).__name__}, not a PassResult")
            if result.summary is not None and not isinstance(result.summary, PassSummary):
                raise PassError(
                    f"pass {p} returned a {type(result.summary).__name__} as its summary; "
                    "return an instance of the pass's own PassSummary dataclass (or None)"
                )
            if result.changed != (graph.version != version):
                raise PassError(
                    f"pass {p} reported changed={result.changed} but the graph version "
                    f"{'did' if graph.version != version else 'did not'} change; "
                    "edit only through graph.rewrite() and report what you did"
                )
            am.invalidate(result.preserved)
            return result
        raise PassError(f"{p!r} is neither an Analysis nor a RewritePass")
