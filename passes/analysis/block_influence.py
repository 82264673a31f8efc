"""Block influence: how much each repeated block (decoder layer, ResNet block) changes its input.

Rules:
- a block is a child of a ModuleList/Sequential (a module path ending in an index, such as
  `model.layers.3`) with at least one sibling; its nodes are those traced inside it
  (`nn_module_stack`); families nested inside another family's blocks (experts inside a
  layer) are not blocks here;
- a block is removable when exactly one of its values leaves it and exactly one value that
  enters it has that value's shape and dtype: the hidden state it maps to the next one.
  Removing it passes that input straight on (the residual stream). Otherwise its `reason`
  says why it stays;
- the score is measured on calibration data between the hidden state entering and leaving
  each removable block, per token (features on the last axis; channels on axis 1 for
  NCHW). `metric="block-influence"` is ShortGPT's 1 − cos; `"angular"` is arccos(cos)/π.
  A low score means the block barely changes what it receives;
- `metric="loss-delta"` needs `Calibration(loss_fn=...)`: the mean increase of the loss per
  batch when the block alone is bypassed (its hidden state in passed on as its hidden state
  out), which is what removing it does. With a causal LM's cross-entropy as the loss, the
  score is the log of the perplexity ratio. It costs one forward pass per removable block
  and batch, plus one.

Example:
    pipeline(block-influence,prune-blocks{ratio=0.25})
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.fx as fx

from sparsec.calibration import Calibration, require_calibration
from sparsec.ir import Graph
from sparsec.passes.analysis._streaming import fan_out, tap
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = ["Block", "BlockInfluence", "find_blocks"]

Metric = Literal["block-influence", "angular", "loss-delta"]


@dataclass(frozen=True)
class Block:
    """One repeated block, its boundary values, and its score (None when not removable)."""

    path: str
    family: str
    nodes: tuple[str, ...]
    hidden_in: str = ""
    hidden_out: str = ""
    reason: str = ""
    score: float | None = None

    @property
    def removable(self) -> bool:
        return not self.reason


def _paths(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [str(value[0]) for value in stack.values() if isinstance(value, tuple) and value]


def _indexed(path: str) -> bool:
    return "." in path and path.rsplit(".", 1)[1].isdigit()


def _same_value(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (
        isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
        and va.dtype == vb.dtype and [str(s) for s in va.shape] == [str(s) for s in vb.shape]
    )


def _boundary(graph: Graph, path: str, family: str, members: list[fx.Node]) -> Block:
    inside = set(members)
    names = tuple(n.name for n in members)
    entering: list[fx.Node] = []
    for node in members:
        for arg in node.all_input_nodes:
            if arg not in inside and arg.op != "get_attr" and arg not in entering:
                entering.append(arg)
    leaving = [n for n in members if any(user not in inside for user in n.users)]
    if len(leaving) != 1:
        return Block(path, family, names, reason=f"{len(leaving)} values leave it (one hidden state expected)")
    out = leaving[0]
    candidates = [n for n in entering if _same_value(n, out)]
    if len(candidates) != 1:
        return Block(
            path, family, names,
            reason=f"{len(candidates)} inputs have its output's shape (one hidden state expected)",
        )
    return Block(path, family, names, candidates[0].name, out.name)


def find_blocks(graph: Graph) -> list[Block]:
    """Repeated blocks in graph order (see module rules); scores are not filled in."""
    members: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for path in _paths(node):
            if _indexed(path):
                members.setdefault(path, []).append(node)
    families: dict[str, list[str]] = {}
    for path in members:
        families.setdefault(path.rsplit(".", 1)[0], []).append(path)
    paths = [p for family in families.values() if len(family) >= 2 for p in family]
    outermost = [p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths)]
    blocks = [_boundary(graph, p, p.rsplit(".", 1)[0], members[p]) for p in outermost]
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(blocks, key=lambda b: order[b.nodes[0]])


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    axis = 1 if a.dim() == 4 else -1
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=axis).flatten()


@register
@pass_dataclass
class BlockInfluence(Analysis):
    """Score each removable repeated block on calibration data (see module docstring)."""

    name: ClassVar[str] = "block-influence"
    metric: Metric = "block-influence"

    def run(self, graph: Graph, am: AnalysisManager) -> list[Block]:
        calibration = require_calibration(am.calibration, self.name)
        blocks = find_blocks(graph)
        scorable = [b for b in blocks if b.removable]
        if self.metric == "loss-delta":
            deltas = _loss_deltas(graph, calibration, scorable)
            return [
                Block(**{**b.__dict__, "score": deltas[b.path]}) if b.removable else b
                for b in blocks
            ]
        totals = {b.path: [0.0, 0] for b in scorable}
        seen: dict[str, torch.Tensor] = {}
        watch: dict[str, list[Callable[[torch.Tensor], None]]] = {}

        def keep(name: str) -> Callable[[torch.Tensor], None]:
            return lambda value: seen.__setitem__(name, value)

        def score(block: Block) -> Callable[[torch.Tensor], None]:
            def add(value: torch.Tensor) -> None:
                cos = _cosines(seen[block.hidden_in], value).clamp(-1.0, 1.0)
                part = 1.0 - cos if self.metric == "block-influence" else torch.arccos(cos) / math.pi
                totals[block.path][0] += float(part.sum())
                totals[block.path][1] += int(part.numel())

            return add

        for block in scorable:
            watch.setdefault(block.hidden_in, []).append(keep(block.hidden_in))
            watch.setdefault(block.hidden_out, []).append(score(block))
        callbacks = {name: fan_out(fns) for name, fns in watch.items()}
        for args, kwargs in calibration:
            seen.clear()
            tap(graph.module, args, kwargs, watch=callbacks)
        return [
            Block(**{**b.__dict__, "score": totals[b.path][0] / max(totals[b.path][1], 1)})
            if b.removable else b
            for b in blocks
        ]


def _loss_deltas(graph: Graph, calibration: Calibration, blocks: list[Block]) -> dict[str, float]:
    """Per block: the mean loss increase per batch with that block bypassed."""
    loss_fn = calibration.require_loss("block-influence{metric=loss-delta}")
    process = graph.module.graph.process_outputs
    totals = dict.fromkeys((b.path for b in blocks), 0.0)
    batches = 0
    for args, kwargs, batch in calibration.with_batches():
        base = float(loss_fn(process(tap(graph.module, args, kwargs)), batch))
        batches += 1
        for block in blocks:
            held: dict[str, torch.Tensor] = {}
            bypassed = tap(
                graph.module,
                args,
                kwargs,
                watch={block.hidden_in: lambda value, held=held: held.__setitem__("in", value)},
                transform={block.hidden_out: lambda _, held=held: held["in"]},
            )
            totals[block.path] += float(loss_fn(process(bypassed), batch)) - base
    return {path: total / max(batches, 1) for path, total in totals.items()}
