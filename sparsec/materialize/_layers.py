"""Updaters for torch's own layers: shape attributes follow the (shrunk) tensors.

Rules:
- sizes come from the weight (or, without an affine weight, the running statistics);
- what a weight cannot say comes from the graph: a conv's `groups` (a depthwise conv
  keeps one group per channel), a GroupNorm's `num_groups`, a LayerNorm's shape.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sparsec.materialize.registry import GraphFacts, register_updater

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
