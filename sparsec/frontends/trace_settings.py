"""Settings a model needs only while it is traced, applied and then restored.

Rules:
- a Hugging Face model whose config has `use_cache=True` returns a KV cache object that
  torch.export cannot flatten; it is traced with `use_cache=False` and the config is restored
  afterwards, so the user's model is unchanged;
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
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["TRACED_EXPERTS", "trace_settings"]

TRACED_EXPERTS = "batched_mm"
"""The experts implementation Hugging Face MoE layers are traced with."""


@contextlib.contextmanager
def _no_kv_cache(model: torch.nn.Module) -> Iterator[list[str]]:
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
def _traced_experts(model: torch.nn.Module) -> Iterator[list[str]]:
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
def trace_settings(model: torch.nn.Module) -> Iterator[list[str]]:
    """Disable what cannot be traced (the KV cache, MoE loops) for the block; yields the notes."""
    with _no_kv_cache(model) as cache, _traced_experts(model) as experts:
        yield [*cache, *experts]
