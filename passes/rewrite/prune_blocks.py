"""Depth pruning: remove the repeated blocks that change their input least.

Rules:
- scores come from `block-influence` (calibrated; `metric` picks the score); the
  `ratio` of removable blocks (rounded) or `count` of them with the lowest scores go;
- each family (the children of one ModuleList/Sequential) keeps at least one block:
  asking to remove every block is a `PreconditionError` naming the family;
- a removed block's hidden output is replaced by its hidden input (the residual stream
  passes through), its nodes are erased and the parameters only it read are dropped;
- the summary lists every block with its score, whether it was removed, and why a block
  could not be (several values leaving it, no single hidden input).

Example:
    pipeline(prune-blocks{ratio=0.25})
    pipeline(prune-blocks{count=2,metric=angular},magnitude-importance,prune-channels{ratio=0.3})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import Field

from sparsec.errors import PreconditionError
from sparsec.ir import Graph
from sparsec.passes.analysis.block_influence import Block, BlockInfluence, Metric
from sparsec.pipeline import (
    AnalysisManager,
    PassResult,
    PassSummary,
    RewritePass,
    pass_dataclass,
    register,
)

__all__ = ["PruneBlocks", "PruneBlocksSummary"]


@dataclass(frozen=True, kw_only=True)
class PruneBlocksSummary(PassSummary):
    """What `prune-blocks` did: a row per block (score, removed, why it could not be); the
    paths of the removed blocks, None when none went."""

    metric: Metric
    blocks: list[dict[str, object]]
    removed: list[str] | None = None


def _chosen(blocks: list[Block], ratio: float, count: int | None) -> list[Block]:
    removable = sorted((b for b in blocks if b.removable), key=lambda b: (b.score, b.path))
    wanted = count if count is not None else round(ratio * len(removable))
    chosen = removable[:wanted]
    for family in {b.family for b in blocks}:
        total = sum(1 for b in blocks if b.family == family)
        gone = sum(1 for b in chosen if b.family == family)
        if total and gone >= total:
            raise PreconditionError(
                f"prune-blocks would remove every block of {family} ({total}); the model would "
                f"have none left. Fix: a smaller ratio or count (at most {total - 1} here)"
            )
    if wanted > len(removable):
        raise PreconditionError(
            f"prune-blocks{{count={wanted}}} asks for more blocks than can be removed "
            f"({len(removable)}). Fix: count <= {len(removable)}"
        )
    return chosen


@register
@pass_dataclass
class PruneBlocks(RewritePass):
    """Remove the least influential repeated blocks (see module docstring)."""

    name: ClassVar[str] = "prune-blocks"
    ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    count: Annotated[int, Field(ge=0)] | None = None
    metric: Metric = "block-influence"

    def run(self, graph: Graph, am: AnalysisManager) -> PassResult:
        blocks = am.get(BlockInfluence(metric=self.metric))
        chosen = _chosen(blocks, self.ratio, self.count)
        rows: list[dict[str, object]] = [
            {
                "block": b.path,
                "score": None if b.score is None else round(b.score, 6),
                "removed": b in chosen,
                **({"kept_because": b.reason} if b.reason else {}),
            }
            for b in blocks
        ]
        if not chosen:
            return PassResult(
                changed=False,
                preserved=frozenset(),
                summary=PruneBlocksSummary(metric=self.metric, blocks=rows),
            )
        nodes = {n.name: n for n in graph.nodes}
        with graph.rewrite(self.name) as rw:
            for block in chosen:
                rw.replace_uses(nodes[block.hidden_out], nodes[block.hidden_in])
            doomed = {name for block in chosen for name in block.nodes}
            for node in reversed(list(graph.nodes)):
                if node.name in doomed and not node.users:
                    rw.erase(node)
            for node in reversed(list(graph.nodes)):
                if node.op == "get_attr" and not node.users:
                    target = str(node.target)
                    rw.erase(node)
                    if not any(n.op == "get_attr" and n.target == target for n in graph.nodes):
                        rw.remove_tensor(target)
        summary = PruneBlocksSummary(
            metric=self.metric, blocks=rows, removed=[b.path for b in chosen]
        )
        return PassResult(changed=True, preserved=frozenset(), summary=summary)
