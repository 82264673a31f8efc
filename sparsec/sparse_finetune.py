"""Mask-preserving fine-tuning: train a sparsified module without regrowing pruned weights.

Rules:
- the masks are the ones `sparsify` recorded on the graph module (`sparsec.ops.masks`), linear
  and conv weights alike (a mask has its weight's shape); layers that `lower-sparse-weights`
  replaced by sparse ops have no dense weight left and drop out;
- given a `CompiledModel`, the masks come from its graph and apply to `compiled.module`,
  the user's module tree, which shares the graph's parameters;
- while active, each masked parameter's gradient is multiplied by its mask (a tensor hook),
  so optimizers without weight decay never move a pruned weight; `reapply()` after each
  optimizer step zeroes them again, which covers weight decay and momentum;
- it keeps no global state: `with preserve_masks(module) as masks: ...` removes its hooks.

Example:
    with preserve_masks(compiled) as masks:
        for x, y in loader:
            loss_fn(compiled.module(x), y).backward()
            optimizer.step(); optimizer.zero_grad()
            masks.reapply()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsec.driver import CompiledModel
from sparsec.errors import PreconditionError
from sparsec.ops.masks import recorded_masks

__all__ = ["MaskedParameters", "preserve_masks"]


@dataclass
class MaskedParameters:
    """The parameters under a mask and the hooks that keep their gradients masked."""

    parameters: dict[str, tuple[torch.nn.Parameter, torch.Tensor]]
    _hooks: list[Any] = field(default_factory=list)

    def reapply(self) -> None:
        """Zero every pruned weight again (after an optimizer step)."""
        with torch.no_grad():
            for parameter, mask in self.parameters.values():
                parameter.mul_(mask.to(parameter.dtype))


def _parameter(module: torch.nn.Module, target: str) -> torch.nn.Parameter:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.nn.Parameter):
        raise PreconditionError(
            f"@{target} carries a sparsity mask but is not a trainable parameter"
        )
    return value


@contextlib.contextmanager
def preserve_masks(model: torch.nn.Module | CompiledModel) -> Iterator[MaskedParameters]:
    """Mask gradients of every sparsified weight of `model` while the block runs."""
    module = model.graph.module if isinstance(model, CompiledModel) else model
    masks = recorded_masks(module)
    if not masks:
        raise PreconditionError(
            "preserve_masks found no sparsity masks: pass the CompiledModel (or its graph "
            "module) of a pipeline with a sparsify pass and no lower-sparse-weights"
        )
    masked = MaskedParameters({t: (_parameter(module, t), m.mask) for t, m in masks.items()})
    for parameter, mask in masked.parameters.values():
        keep = mask.to(parameter.dtype)
        masked._hooks.append(parameter.register_hook(lambda grad, keep=keep: grad * keep))
    try:
        masked.reapply()
        yield masked
    finally:
        for hook in masked._hooks:
            hook.remove()
