"""The Rewriter: the only way to edit a Graph, so versions and change logs stay honest.

Rules:
- parameters are replaced, never edited in place, so the user's model is never mutated;
- every edit appends a `Change`; `finish()` recompiles, re-propagates shapes and bumps the
  graph's version once if anything changed.

Example:
    with graph.rewrite("prune-channels") as rw:
        rw.slice_parameter("conv1.weight", axis=0, keep=[0, 1, 5])
        rw.set_args(view_node, (view_node.args[0], [-1, 3, 4]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from sparsec.errors import RewriteError
from sparsec.ir.graph import MASKS_META

if TYPE_CHECKING:
    from sparsec.ir.graph import Graph

__all__ = ["Change", "Rewriter"]


@dataclass(frozen=True)
class Change:
    """One recorded edit: which pass made it, what kind, on what, and a short detail."""

    owner: str
    kind: str
    target: str
    detail: str


class Rewriter:
    """Edits one Graph on behalf of one pass (`owner`)."""

    def __init__(self, graph: Graph, owner: str) -> None:
        self.graph = graph
        self.owner = owner
        self.changes: list[Change] = []

    def _log(self, kind: str, target: str, detail: str) -> None:
        self.changes.append(Change(self.owner, kind, target, detail))

    def _owner_module(self, target: str) -> tuple[torch.nn.Module, str]:
        *path, leaf = target.split(".")
        module: torch.nn.Module = self.graph.module
        for part in path:
            module = getattr(module, part)
        return module, leaf

    # ----- sparsity masks (IR state) -----
    def set_mask(self, target: str, mask: Any) -> None:
        """Record the sparsity mask of weight `target` (a `WeightMask`)."""
        self.graph.module.meta.setdefault(MASKS_META, {})[target] = mask
        self._log("mask", target, str(getattr(mask, "pattern", "")))

    def drop_mask(self, target: str) -> None:
        """Forget the mask of `target` (its weight was lowered to a compressed op)."""
        if self.graph.module.meta.get(MASKS_META, {}).pop(target, None) is not None:
            self._log("drop-mask", target, "")

    # ----- parameters and buffers -----
    def replace_tensor(self, target: str, value: torch.Tensor) -> None:
        """Give parameter or buffer `target` a new value (shape may change)."""
        module, leaf = self._owner_module(target)
        old = getattr(module, leaf, None)
        if not isinstance(old, torch.Tensor):
            raise RewriteError(f"{self.owner}: @{target} is not a parameter or buffer")
        if isinstance(old, torch.nn.Parameter):
            setattr(module, leaf, torch.nn.Parameter(value, requires_grad=old.requires_grad))
        else:
            module._buffers[leaf] = value
        self._log("replace", target, f"{tuple(old.shape)} -> {tuple(value.shape)}")

    def slice_parameter(self, target: str, axis: int, keep: Sequence[int] | torch.Tensor) -> None:
        """Keep only indices `keep` (ascending) of `target` along `axis`."""
        old = self.graph.tensor(target)
        index = torch.as_tensor(keep, dtype=torch.long, device=old.device)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= old.shape[axis]):
            raise RewriteError(
                f"{self.owner}: keep indices out of range for @{target} axis {axis} "
                f"(size {old.shape[axis]})"
            )
        if old.device.type == "meta":
            new_shape = list(old.shape)
            new_shape[axis] = index.numel()
            new = torch.empty(new_shape, dtype=old.dtype, device="meta")
        else:
            new = old.detach().index_select(axis, index).clone()
        self.replace_tensor(target, new)

    def remove_tensor(self, target: str) -> None:
        """Drop a parameter or buffer that no get_attr node reads any more."""
        readers = [n.name for n in self.graph.module.graph.nodes if n.op == "get_attr" and n.target == target]
        if readers:
            raise RewriteError(f"{self.owner}: cannot remove @{target}: still read by %{', %'.join(readers)}")
        module, leaf = self._owner_module(target)
        if leaf in module._parameters:
            del module._parameters[leaf]
        elif leaf in module._buffers:
            del module._buffers[leaf]
        else:
            raise RewriteError(f"{self.owner}: @{target} is not a parameter or buffer")
        self._log("remove", target, "")

    def share_tensor(self, alias: str, source: str) -> None:
        """Make `alias` refer to the same tensor as `source` (tied weights stay tied)."""
        module, leaf = self._owner_module(alias)
        value = self.graph.tensor(source)
        if isinstance(value, torch.nn.Parameter):
            setattr(module, leaf, value)
        else:
            module._buffers[leaf] = value
        self._log("share", alias, source)

    def add_tensor(self, name: str, value: torch.Tensor, *, parameter: bool = True) -> str:
        """Register a new parameter/buffer on the root module; returns its (unique) target."""
        base, target, k = name.replace(".", "_"), name.replace(".", "_"), 0
        while hasattr(self.graph.module, target):
            k += 1
            target = f"{base}_{k}"
        if parameter:
            self.graph.module.register_parameter(target, torch.nn.Parameter(value))
        else:
            self.graph.module.register_buffer(target, value)
        self._log("add", target, str(tuple(value.shape)))
        return target

    # ----- nodes -----
    def set_args(
        self, node: fx.Node, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None
    ) -> None:
        """Change a node's arguments (shape constants, groups, split sizes, ...)."""
        before = (node.args, dict(node.kwargs))
        if args is not None:
            node.args = tuple(args)
        if kwargs is not None:
            node.kwargs = dict(kwargs)
        self._log("args", node.name, f"{before} -> {(node.args, dict(node.kwargs))}")

    def set_target(self, node: fx.Node, target: Any) -> None:
        """Swap a node's op for an equivalent one that takes its new arguments."""
        before = node.target
        node.target = target
        self._log("target", node.name, f"{before} -> {target}")

    def insert_call(
        self,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        before: fx.Node | None = None,
        after: fx.Node | None = None,
    ) -> fx.Node:
        """Insert a call_function node before or after an existing one."""
        if (before is None) == (after is None):
            raise RewriteError(f"{self.owner}: insert_call needs exactly one of before= or after=")
        graph = self.graph.module.graph
        ctx = graph.inserting_before(before) if before is not None else graph.inserting_after(after)
        with ctx:
            node = graph.call_function(target, args, kwargs or {})
        self._log("insert", node.name, str(target))
        return node

    def get_attr(self, target: str, *, before: fx.Node) -> fx.Node:
        """A get_attr node reading `target`, inserted before `before`."""
        with self.graph.module.graph.inserting_before(before):
            node = self.graph.module.graph.get_attr(target)
        self._log("insert", node.name, f"get_attr {target}")
        return node

    def replace_uses(self, old: fx.Node, new: fx.Node) -> None:
        old.replace_all_uses_with(new)
        self._log("replace-uses", old.name, new.name)

    def erase(self, node: fx.Node) -> None:
        if node.users:
            users = ", ".join(f"%{u.name}" for u in node.users)
            raise RewriteError(f"{self.owner}: cannot erase %{node.name}: still used by {users}")
        self.graph.module.graph.erase_node(node)
        self._log("erase", node.name, "")

    def finish(self) -> None:
        """Recompile and re-propagate shapes once; bump the version if anything changed."""
        if not self.changes:
            return
        self.graph.module.graph.lint()
        self.graph.module.recompile()
        self.graph.propagate_shapes()
        self.graph.version += 1
