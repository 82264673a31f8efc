"""Lowering passes: a backend's own rewrites, run on its copy of the graph by the PassManager.

Rules:
- a backend never rewrites the graph compile() hands it: it lowers a copy (`Graph.copy`),
  so the artifact keeps the unlowered, exportable program and a failed lowering changes
  nothing;
- its rewrites (chain fusion, kernel binding, 2:4 conversion) are registered RewritePasses
  that edit through the Rewriter, run by the same PassManager as the user's pipeline:
  verified after each, and timed and dumped (`--dump-ir`) by compile()'s instruments, which
  reach the backend as `BackendOptions.instruments`;
- what the passes say in `PassResult.notes` (what was lowered, what was not and why) becomes
  the executable's notes, and so the report's.

Example:
    lowered = graph.copy()
    notes = run_lowering(lowered, [FuseSparseChains()], options)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sparsec.pipeline import PassManager, RewritePass, VerifyEach

if TYPE_CHECKING:
    from sparsec.ir import Graph

    from .base import BackendOptions

__all__ = ["run_lowering"]


def run_lowering(
    graph: Graph, passes: Sequence[RewritePass], options: BackendOptions
) -> list[str]:
    """Run `passes` in order on `graph` (the backend's copy); the notes they leave."""
    run = PassManager(list(passes), [*options.instruments, VerifyEach()]).run(graph)
    return [note for _, result in run.results if result is not None for note in result.notes]
