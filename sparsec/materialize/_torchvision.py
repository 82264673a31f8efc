"""Updaters for torchvision models whose forward reads a width from an attribute.

Rules:
- `VisionTransformer` reshapes its patch embedding to `hidden_dim`, the width of its
  position embedding (the conv stem's last layer may be `conv_proj` or a Sequential);
- `EncoderBlock` stores `num_heads` beside its attention: it follows the attention's count.

Example:
    compiled = sparsec.compile(torchvision.models.vit_b_16().eval(), (x,), pipeline="structured-50")
    compiled.module.hidden_dim   # 384
"""

from __future__ import annotations

from typing import Any

from sparsec.materialize.registry import GraphFacts, register_updater

__all__: list[str] = []


@register_updater(("torchvision", "VisionTransformer"))
def _vision_transformer(module: Any, facts: GraphFacts) -> None:
    module.hidden_dim = int(module.encoder.pos_embedding.shape[-1])


@register_updater(("torchvision", "EncoderBlock"))
def _encoder_block(module: Any, facts: GraphFacts) -> None:
    module.num_heads = int(module.self_attention.num_heads)
