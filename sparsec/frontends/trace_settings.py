"""Settings a model needs only while it is traced, applied and then restored.

Rules:
- a Hugging Face model whose config has `use_cache=True` returns a KV cache object that
  torch.export cannot flatten; it is traced with `use_cache=False` and the config is restored
  afterwards, so the user's model is unchanged (`no_kv_cache`, which the materializer's
  check uses too);
- each `nn.MultiheadAttention` is traced through `sparsec.nn.head_attention`, the same
  computation on the same parameters laid out head by head, so its heads prune; torch's
  forward folds heads into the batch. One that it cannot express (`sparsec.nn.unsupported`)
  is traced as torch runs it, and the note names it and why;
- torch's fused attention fast paths (`TransformerEncoderLayer` in eval mode, nested tensors
  for padding masks) are switched off while tracing (`no_attention_fastpath`), so the
  attention modules' forwards are what gets traced; the materializer's check runs without
  them too, since they leave padded positions at zero where torch's own forward computes them;
- Hugging Face mixture-of-experts layers (classes under transformers'
  `use_experts_implementation`: Mixtral, Qwen2-MoE, Qwen3-MoE) pick their experts' forward
  from `config._experts_implementation`: "eager" loops over the experts hit (data-dependent,
  torch.export cannot trace it) and "grouped_mm" counts tokens per expert with
  `histc(bins=num_experts)` around an opaque kernel; they are traced with "batched_mm"
  (`TRACED_EXPERTS`: the same function, each token's experts gathered as
  `weights[expert_ids]` and multiplied with bmm, which the dependency analysis follows);
- every change made is returned as a sentence for the report.

Example:
    with trace_settings(model) as notes:
        program = torch.export.export(model, args)
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sparsec.nn import head_attention, unsupported

__all__ = ["TRACED_EXPERTS", "no_attention_fastpath", "no_kv_cache", "trace_settings"]

TRACED_EXPERTS = "batched_mm"
"""The experts implementation Hugging Face MoE layers are traced with."""


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[list[str]]:
    """Set a Hugging Face config's `use_cache` to False for the block; yields the notes."""
    config: Any = getattr(model, "config", None)
    notes: list[str] = []
    if getattr(config, "use_cache", False) is True:
        config.use_cache = False
        notes.append(
            "traced with config.use_cache=False (a KV cache cannot be traced); the model's "
            "config is unchanged"
        )
    try:
        yield notes
    finally:
        if notes:
            config.use_cache = True


@contextlib.contextmanager
def no_attention_fastpath() -> Iterator[None]:
    """Switch torch's fused attention kernels off for the block (`torch.backends.mha`)."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _head_attention(model: nn.Module) -> Iterator[list[str]]:
    """Run every supported nn.MultiheadAttention through `head_attention` for the block."""
    substituted, left = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.MultiheadAttention):
            continue
        reason = "forward replaced on the instance" if "forward" in vars(module) else unsupported(module)
        if reason is not None:
            left.append(f"{name or 'the root'} ({reason})")
            continue
        module.forward = types.MethodType(head_attention, module)  # type: ignore[method-assign]
        substituted.append(module)
    notes = []
    if substituted:
        notes.append(
            f"traced {len(substituted)} nn.MultiheadAttention through sparsec.nn.head_attention "
            "(the same parameters and outputs, one axis per head) so that their heads prune"
        )
    if left:
        notes.append(
            "nn.MultiheadAttention traced as torch runs it, heads kept whole: " + "; ".join(left)
        )
    try:
        yield notes
    finally:
        for module in substituted:
            del module.forward


@contextlib.contextmanager
def _traced_experts(model: nn.Module) -> Iterator[list[str]]:
    """Trace Hugging Face experts modules with `TRACED_EXPERTS` for the block."""
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        # `_is_expert_parallel` is set on instances by use_experts_implementation
        if hasattr(module, "_is_expert_parallel") and hasattr(config, "_experts_implementation_internal"):
            configs.setdefault(id(config), config)
    old = {key: config._experts_implementation_internal for key, config in configs.items()}
    switched = sorted({str(v) for v in old.values() if v != TRACED_EXPERTS})
    for config in configs.values():
        config._experts_implementation_internal = TRACED_EXPERTS
    notes = [
        f"mixture-of-experts layers traced with experts implementation {TRACED_EXPERTS!r} "
        f"instead of {', '.join(map(repr, switched))} (a data-dependent loop or an opaque "
        "grouped kernel, which the graph cannot follow); the model's config is unchanged"
    ] if switched else []
    try:
        yield notes
    finally:
        for key, config in configs.items():
            config._experts_implementation_internal = old[key]


@contextlib.contextmanager
def trace_settings(model: nn.Module) -> Iterator[list[str]]:
    """Apply the module rules' settings for the block; yields the report notes."""
    with (
        no_kv_cache(model) as cache,
        _head_attention(model) as attention,
        _traced_experts(model) as experts,
        no_attention_fastpath(),
    ):
        yield [*cache, *attention, *experts]
