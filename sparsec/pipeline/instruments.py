"""Pass instruments: hooks that observe a pipeline run without changing it.

Rules:
- an instrument sees `before(pass, graph)` and `after(pass, graph, result)` for each
  pipeline entry, analyses included (`result` is None for analyses);
- instruments record what they measure in `records`, which the report reads;
- before each entry every instrument is asked `should_run(pass, graph)`; one False skips
  the entry (no hooks run for it): `PassFilter` bisects a pipeline this way.

Example:
    pm = PassManager(pipeline, instruments=[Timing(), IRDump(Path("dumps"))])
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils import _pytree as pytree

from sparsec.errors import NumericMismatchError

if TYPE_CHECKING:
    from sparsec.ir import Graph
    from sparsec.pipeline.base import Pass, PassResult

__all__ = ["Instrument", "PassFilter", "Timing", "Statistics", "IRDump", "VerifyEach", "NumericCheck", "max_abs_diff"]


class Instrument:
    """Base instrument: does nothing; override `should_run` / `before` / `after`."""

    def should_run(self, p: Pass, graph: Graph) -> bool:
        return True

    def before(self, p: Pass, graph: Graph) -> None:
        return None

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        return None


@dataclass
class PassFilter(Instrument):
    """Skip passes by name, or stop after one: bisect a pipeline without editing it.

    Rules (LLVM's -opt-bisect-limit, TVM's `should_run`):
    - `skip`: pass names (kebab-case, "prune-channels") that never run;
    - `stop_after`: once the pass of that name has run, no later entry runs;
    - `records`: (entry, why) for every entry skipped; `dataclasses.replace` gives a fresh
      filter with the same settings and no records.
    Example: `PassManager(pipeline, [PassFilter(stop_after="prune-channels")])`.
    """

    skip: frozenset[str] = frozenset()
    stop_after: str | None = None
    records: list[tuple[str, str]] = field(default_factory=list, init=False)
    _stopped: bool = field(default=False, init=False)

    def should_run(self, p: Pass, graph: Graph) -> bool:
        if self._stopped:
            self.records.append((str(p), f"stopped after {self.stop_after}"))
            return False
        if p.name in self.skip:
            self.records.append((str(p), "skipped by name"))
            return False
        return True

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        if p.name == self.stop_after:
            self._stopped = True


@dataclass
class Timing(Instrument):
    """Wall time of each pipeline entry, in seconds."""

    records: list[tuple[str, float]] = field(default_factory=list)
    _start: float = 0.0

    def before(self, p: Pass, graph: Graph) -> None:
        self._start = time.perf_counter()

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        self.records.append((str(p), time.perf_counter() - self._start))


@dataclass
class Statistics(Instrument):
    """Node and parameter counts before and after each entry, and whether it changed anything."""

    records: list[dict[str, Any]] = field(default_factory=list)
    _before: tuple[int, int] = (0, 0)

    def before(self, p: Pass, graph: Graph) -> None:
        self._before = (graph.num_nodes(), graph.num_parameters())

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        self.records.append(
            {
                "pass": str(p),
                "nodes_before": self._before[0],
                "nodes_after": graph.num_nodes(),
                "params_before": self._before[1],
                "params_after": graph.num_parameters(),
                "changed": bool(result and result.changed),
            }
        )


@dataclass
class IRDump(Instrument):
    """Writes `NN-<pass>.before.txt` / `.after.txt` text IR into `directory`."""

    directory: Path
    before_too: bool = False
    _index: int = 0

    def before(self, p: Pass, graph: Graph) -> None:
        self._index += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.before_too:
            (self.directory / f"{self._index:02d}-{p.name}.before.txt").write_text(str(graph))

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        (self.directory / f"{self._index:02d}-{p.name}.after.txt").write_text(str(graph))


class VerifyEach(Instrument):
    """Runs `graph.verify()` after every rewrite."""

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        if result is not None:
            graph.verify()


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    return [x for x in pytree.tree_leaves(value) if isinstance(x, torch.Tensor)]


def max_abs_diff(actual: Any, expected: Any) -> float:
    """Largest absolute difference over all tensor leaves; inf if shapes differ."""
    a, b = _flat_tensors(actual), _flat_tensors(expected)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return float("inf")
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True) if x.numel()), default=0.0)


@dataclass
class NumericCheck(Instrument):
    """Runs the graph on the example inputs after each rewrite and records its deviation.

    Every changed graph is compared with the input model (`reference`) and the deviation is
    recorded: pruning changes outputs by design. A pass that declares `preserves_numerics`
    must also keep the outputs it was given (those from just before it) within
    `atol + rtol*|before|`, so a restructuring pass after pruning is checked too.
    """

    reference: Any
    atol: float = 1e-4
    rtol: float = 1e-4
    records: list[tuple[str, float]] = field(default_factory=list)
    _before: Any = None

    @staticmethod
    def _outputs(graph: Graph) -> Any:
        with torch.no_grad():
            return graph.module(*graph.example_args, **graph.example_kwargs)

    def before(self, p: Pass, graph: Graph) -> None:
        self._before = self._outputs(graph) if getattr(p, "preserves_numerics", False) else None

    def after(self, p: Pass, graph: Graph, result: PassResult | None) -> None:
        if result is None or not result.changed:
            return
        actual = self._outputs(graph)
        self.records.append((str(p), max_abs_diff(actual, self.reference)))
        if self._before is None:
            return
        err = max_abs_diff(actual, self._before)
        scale = max((float(t.abs().max()) for t in _flat_tensors(self._before) if t.numel()), default=0.0)
        if err > self.atol + self.rtol * scale:
            raise NumericMismatchError(
                f"pass {p} promised to keep outputs but changed them by {err:.3g} "
                f"(tolerance {self.atol + self.rtol * scale:.3g}); this is a bug in that pass"
            )
