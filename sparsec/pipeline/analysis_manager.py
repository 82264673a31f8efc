"""Lazy, cached analyses, invalidated when the graph changes.

Rules:
- `get(analysis)` computes on first use and caches per (analysis, graph version);
- while an analysis runs, every analysis it asks for is recorded as its dependency;
- `invalidate(preserved)` drops every cached result whose type is not preserved, and every
  result that depends on a dropped one; preserved results are re-stamped to the new version;
- `provider(role)` returns the analysis a pipeline chose for a role, or a default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sparsec.pipeline.base import PRESERVE_ALL, Analysis

if TYPE_CHECKING:
    from sparsec.calibration import Calibration
    from sparsec.ir import Graph

__all__ = ["AnalysisManager"]


class AnalysisManager:
    """Caches analysis results for one Graph."""

    def __init__(self, graph: Graph, calibration: Calibration | None = None) -> None:
        self.graph = graph
        self.calibration = calibration
        self._cache: dict[Analysis, tuple[int, Any]] = {}
        self._deps: dict[Analysis, set[Analysis]] = {}
        self._stack: list[Analysis] = []
        self._roles: dict[str, Analysis] = {}
        self.hooks: list[Callable[[Analysis, bool], None]] = []
        self.computed: list[Analysis] = []  # every computation, in order (tests and reports)

    def get(self, analysis: Analysis) -> Any:
        """The result of `analysis` on the current graph, computing it if needed."""
        if self._stack:
            self._deps.setdefault(analysis, set())
            self._deps[self._stack[-1]] = self._deps.get(self._stack[-1], set()) | {analysis}
        cached = self._cache.get(analysis)
        if cached is not None and cached[0] == self.graph.version:
            return cached[1]
        self._drop(analysis)
        self._stack.append(analysis)
        for hook in self.hooks:
            hook(analysis, True)
        try:
            version = self.graph.version
            result = analysis.run(self.graph, self)
            if self.graph.version != version:
                raise RuntimeError(f"analysis {analysis.name} edited the graph; analyses must not")
        finally:
            self._stack.pop()
            for hook in self.hooks:
                hook(analysis, False)
        self._cache[analysis] = (self.graph.version, result)
        self.computed.append(analysis)
        return result

    def is_cached(self, analysis: Analysis) -> bool:
        cached = self._cache.get(analysis)
        return cached is not None and cached[0] == self.graph.version

    def choose(self, analysis: Analysis) -> None:
        """Make `analysis` the provider of its role for later passes."""
        if analysis.role:
            self._roles[analysis.role] = analysis

    def provider(self, role: str, default: Analysis) -> Analysis:
        """The analysis chosen for `role` by the pipeline, else `default`."""
        return self._roles.get(role, default)

    def _drop(self, analysis: Analysis) -> None:
        """Forget `analysis` and, transitively, everything that was computed from it."""
        self._cache.pop(analysis, None)
        for dependent, deps in list(self._deps.items()):
            if analysis in deps and dependent in self._cache:
                self._drop(dependent)

    def invalidate(self, preserved: Any) -> None:
        """After a pass: keep only what it preserved (and what that depends on survives)."""
        if preserved is PRESERVE_ALL:
            for key, (_, result) in list(self._cache.items()):
                self._cache[key] = (self.graph.version, result)
            return
        for analysis in list(self._cache):
            if type(analysis) not in preserved:
                self._drop(analysis)
        for key, (_, result) in list(self._cache.items()):
            self._cache[key] = (self.graph.version, result)
