"""Per-class updaters: after a layer's tensors shrink, make its attributes agree with them.

Rules:
- an updater is `fn(module, facts) -> None`; it reads the module's (already replaced)
  tensors and its children's, and sets the attributes its class's forward reads
  (`in_features`, `num_heads`, `split_size`, ...);
- classes are registered by type (torch layers, user classes) or, for libraries sparsec
  does not import, by `(module prefix, class name)`; a subclass uses its nearest
  registered base, so `class MyConv(nn.Conv2d)` is covered;
- `facts` answers what tensors cannot say, from the pruned graph (a conv's `groups`); it
  names tensors relative to the module (`"weight"`).

Example:
    @register_updater(MyAttention)
    def _update(module: MyAttention, facts: GraphFacts) -> None:
        module.heads = module.qkv.out_features // (3 * module.head_dim)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

__all__ = ["GraphFacts", "Updater", "register_updater", "updater_for"]


class GraphFacts(Protocol):
    """What the pruned graph says about a module's call that its tensors do not."""

    def call_arg(self, tensor: str, arg_name: str) -> Any:
        """Argument `arg_name` of the op that reads the module's `tensor` (None if unknown)."""


Updater = Callable[[Any, GraphFacts], None]

_BY_TYPE: dict[type, Updater] = {}
_BY_NAME: dict[tuple[str, str], Updater] = {}


def register_updater(*classes: type | tuple[str, str]) -> Callable[[Updater], Updater]:
    """Register `fn` for each class: a type, or `("transformers", "GPT2Attention")`."""

    def decorate(fn: Updater) -> Updater:
        for cls in classes:
            if isinstance(cls, type):
                _BY_TYPE[cls] = fn
            else:
                _BY_NAME[cls] = fn
        return fn

    return decorate


def updater_for(module: nn.Module) -> Updater | None:
    """The updater of the nearest registered class in `type(module)`'s MRO, if any."""
    for cls in type(module).__mro__:
        if cls in _BY_TYPE:
            return _BY_TYPE[cls]
        package = cls.__module__.split(".", 1)[0]
        if (package, cls.__name__) in _BY_NAME:
            return _BY_NAME[(package, cls.__name__)]
    return None
