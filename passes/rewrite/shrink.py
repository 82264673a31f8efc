"""Physically remove units from a graph: slice parameters, update shape constants.

Shared by every structured rewrite (channels, heads): they choose units, this removes them.

Rules:
- each parameter is sliced once per axis even when several get_attr nodes or aliased
  names read it, and aliases keep sharing one tensor afterwards;
- shape constants are updated by the op resizers (OpInfo.resize, sparsec.ir.opinfo), which see the shapes
  from before the removal.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx

from sparsec.errors import PreconditionError
from sparsec.ir import Graph, Rewriter
from sparsec.ir.opinfo import Resize, Slot, op_info
from sparsec.passes.analysis.dependency_groups import DependencyInfo

__all__ = ["emptied_slots", "remove_units"]


def _changed_slots(deps: DependencyInfo, removed: np.ndarray) -> dict[Slot, np.ndarray]:
    kept: dict[Slot, np.ndarray] = {}
    for slot, labels in deps.slot_units.items():
        mask = np.isin(labels, removed)
        if mask.any():
            kept[slot] = np.nonzero(~mask)[0]
    return kept


def _slice_parameters(graph: Graph, rw: Rewriter, kept: dict[Slot, np.ndarray]) -> None:
    per_tensor: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    targets: dict[int, list[str]] = defaultdict(list)
    for node in graph.nodes:
        if node.op != "get_attr":
            continue
        tensor = graph.tensor(str(node.target))
        if str(node.target) not in targets[id(tensor)]:
            targets[id(tensor)].append(str(node.target))
        for (name, axis), keep in kept.items():
            if name == node.name:
                per_tensor[id(tensor)][axis] = keep
    for tensor_id, axes in per_tensor.items():
        first, *aliases = targets[tensor_id]
        for axis, keep in sorted(axes.items()):
            rw.slice_parameter(first, axis, keep.tolist())
        for alias in aliases:
            rw.share_tensor(alias, first)


def _resize_ops(graph: Graph, rw: Rewriter, kept: dict[Slot, np.ndarray]) -> None:
    def kept_of(node: object, axis: int) -> np.ndarray | None:
        if not isinstance(node, fx.Node):
            return None
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            return None
        return kept.get((node.name, axis % val.dim()))

    def new_size(node: object, axis: int) -> int | None:
        keep = kept_of(node, axis)
        return None if keep is None else len(keep)

    ask = Resize(new_size=new_size, kept=kept_of)
    for node in graph.nodes:
        info = op_info(node.target) if node.op == "call_function" else None
        fn = info.resize if info is not None else None
        if fn is None:
            continue
        update = fn(node, ask)
        if update is not None:
            rw.set_args(node, update.args, update.kwargs)
            if update.target is not None and update.target is not node.target:
                rw.set_target(node, update.target)


def emptied_slots(deps: DependencyInfo, removed: np.ndarray) -> list[Slot]:
    """The slots that would lose every index if `removed` went (a layer left with no width)."""
    return [slot for slot, keep in _changed_slots(deps, np.asarray(removed)).items() if len(keep) == 0]


def remove_units(graph: Graph, deps: DependencyInfo, removed: np.ndarray, owner: str) -> int:
    """Remove `removed` units everywhere; returns how many slots shrank.

    Refuses (PreconditionError) a removal that would leave some tensor axis empty: a concat
    branch or a split part can lose all its channels while its group keeps others.
    """
    if len(removed) == 0:
        return 0
    kept = _changed_slots(deps, np.asarray(removed))
    empty = [slot for slot, keep in kept.items() if len(keep) == 0]
    if empty:
        where = ", ".join(f"%{name} axis {axis}" for name, axis in empty[:5])
        raise PreconditionError(
            f"{owner}: removing these units would leave {where} with no channels; "
            "choose units with emptied_slots() in mind (keep at least one per slot)"
        )
    with graph.rewrite(owner) as rw:
        _resize_ops(graph, rw, kept)
        _slice_parameters(graph, rw, kept)
    return len(kept)
