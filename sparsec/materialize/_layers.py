"""Updaters for torch's own layers: shape attributes follow the (shrunk) tensors.

Rules:
- sizes come from the weight (or, without an affine weight, the running statistics);
- what a weight cannot say comes from the graph: a conv's `groups` (a depthwise conv
  keeps one group per channel), a GroupNorm's `num_groups`, a LayerNorm's shape;
- an `nn.MultiheadAttention` that lost heads becomes `sparsec.nn.PrunedMultiheadAttention`
  (torch's forward derives the head width from `embed_dim`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsec.materialize.registry import GraphFacts, register_updater
from sparsec.nn import PrunedMultiheadAttention, unsupported

__all__: list[str] = []


@register_updater(nn.Linear)
def _linear(module: nn.Linear, facts: GraphFacts) -> None:
    module.out_features, module.in_features = (int(s) for s in module.weight.shape)


@register_updater(nn.Bilinear)
def _bilinear(module: nn.Bilinear, facts: GraphFacts) -> None:
    module.out_features, module.in1_features, module.in2_features = (int(s) for s in module.weight.shape)


@register_updater(nn.modules.conv._ConvNd)
def _conv(module: Any, facts: GraphFacts) -> None:
    groups = facts.call_arg("weight", "groups")
    if groups is not None:
        module.groups = int(groups)
    first, second = (int(s) for s in module.weight.shape[:2])
    if module.transposed:  # [in, out/groups, *k]
        module.in_channels, module.out_channels = first, second * module.groups
    else:  # [out, in/groups, *k]
        module.out_channels, module.in_channels = first, second * module.groups


@register_updater(nn.modules.batchnorm._NormBase)
def _batch_norm(module: Any, facts: GraphFacts) -> None:
    reference = module.weight if module.weight is not None else module.running_mean
    if reference is not None:
        module.num_features = int(reference.shape[0])


@register_updater(nn.LayerNorm, nn.RMSNorm)
def _layer_norm(module: Any, facts: GraphFacts) -> None:
    if module.weight is not None:
        module.normalized_shape = tuple(int(s) for s in module.weight.shape)


@register_updater(nn.GroupNorm)
def _group_norm(module: nn.GroupNorm, facts: GraphFacts) -> None:
    num_groups = facts.call_arg("weight", "num_groups")
    if num_groups is not None:
        module.num_groups = int(num_groups)
    if module.weight is not None:
        module.num_channels = int(module.weight.shape[0])


@register_updater(nn.Embedding)
def _embedding(module: nn.Embedding, facts: GraphFacts) -> None:
    module.num_embeddings, module.embedding_dim = (int(s) for s in module.weight.shape)


@register_updater(nn.PReLU)
def _prelu(module: nn.PReLU, facts: GraphFacts) -> None:
    module.num_parameters = int(module.weight.numel())


@register_updater(nn.MultiheadAttention)
def _multihead_attention(module: Any, facts: GraphFacts) -> None:
    """Heads go whole, so `head_dim` stays; the head count and widths follow the tensors.
    Once `num_heads · head_dim` no longer fills `embed_dim`, or the query's width differs
    from it, torch's forward cannot run it: the copy becomes
    `PrunedMultiheadAttention`, which adds only a forward (not for a module that forward cannot
    express, `sparsec.nn.unsupported`: the check then names it)."""
    module.embed_dim = int(module.out_proj.weight.shape[0])
    module.num_heads = int(module.out_proj.weight.shape[1]) // module.head_dim
    if module.in_proj_weight is not None:
        module.kdim = module.vdim = int(module.in_proj_weight.shape[1])
    else:
        module.kdim, module.vdim = int(module.k_proj_weight.shape[1]), int(module.v_proj_weight.shape[1])
    query = module.in_proj_weight if module.in_proj_weight is not None else module.q_proj_weight
    fits = module.num_heads * module.head_dim == module.embed_dim == int(query.shape[1])
    if not fits and unsupported(module) is None:
        module.__class__ = PrunedMultiheadAttention
        module._qkv_same_embed_dim = False


@register_updater(nn.TransformerEncoder)
def _transformer_encoder(module: nn.TransformerEncoder, facts: GraphFacts) -> None:
    """torch's own rule from `__init__`: no nested-tensor fast path for attention whose
    `_qkv_same_embed_dim` is False (a `PrunedMultiheadAttention` runs no fused kernel)."""
    attention = getattr(module.layers[0], "self_attn", None)
    if isinstance(attention, nn.MultiheadAttention) and not attention._qkv_same_embed_dim:
        module.use_nested_tensor = False
