"""Blocks that depth pruning removed from the graph, removed from the user's module tree too.

Rules:
- a removed block is a child of a ModuleList or Sequential whose tensors are all gone from
  the graph while a sibling's remain (`prune-blocks` drops a block's parameters with it);
- the container keeps the other children, renumbered from 0, so `state_dict` names match
  a model built with the smaller depth;
- for a Hugging Face model whose container held `config.num_hidden_layers` blocks, the
  config's layer count (and `layer_types`) follows, and each kept block's `layer_idx`
  attributes are renumbered, so caches index the layers that exist;
- `renames` maps each new module path prefix to the old one, for records and attribute diffs.

Example:
    renames = drop_removed_blocks(tree, user_tensor_names, graph_tensor_names)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["drop_removed_blocks", "renamed"]


def _removed_children(
    name: str, container: nn.Module, user: set[str], graph: set[str]
) -> list[str] | None:
    """Children of `container` whose tensors the graph no longer has (None: nothing removed)."""
    removed, kept_any = [], False
    for child in container._modules:
        prefix = f"{name}.{child}." if name else f"{child}."
        tensors = [n for n in user if n.startswith(prefix)]
        if tensors and not any(n in graph for n in tensors):
            removed.append(child)
        elif any(n in graph for n in tensors):
            kept_any = True
    return removed if removed and kept_any else None


def _renumber(module: nn.Module, index: int) -> None:
    for sub in module.modules():
        if isinstance(getattr(sub, "layer_idx", None), int):
            sub.layer_idx = index


def drop_removed_blocks(tree: nn.Module, user: Iterable[str], graph: Iterable[str]) -> dict[str, str]:
    """Remove from `tree` the blocks the graph dropped; returns {new prefix: old prefix}."""
    user_names, graph_names = set(user), set(graph)
    renames: dict[str, str] = {}
    config: Any = getattr(tree, "config", None)
    for name, container in list(tree.named_modules()):
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        removed = _removed_children(name, container, user_names, graph_names)
        if removed is None:
            continue
        old_count = len(container._modules)
        kept = [(old, child) for old, child in container._modules.items() if old not in removed]
        container._modules = OrderedDict((str(i), child) for i, (_, child) in enumerate(kept))
        base = f"{name}." if name else ""
        renames.update({f"{base}{i}.": f"{base}{old}." for i, (old, _) in enumerate(kept) if str(i) != old})
        if config is not None and getattr(config, "num_hidden_layers", None) == old_count:
            config.num_hidden_layers = len(kept)
            if isinstance(getattr(config, "layer_types", None), list):
                config.layer_types = [config.layer_types[int(old)] for old, _ in kept]
            for i, (_, child) in enumerate(kept):
                _renumber(child, i)
    return renames


def renamed(name: str, renames: dict[str, str]) -> str:
    """The old name of a module or tensor path under a renumbered block (others unchanged)."""
    key = name + "."
    for new, old in renames.items():
        if key.startswith(new):
            return (old + key[len(new):])[:-1]
    return name
