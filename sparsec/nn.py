"""torch layers sparsec's pruned models contain: multi-head attention with any head count.

Rules:
- `head_attention` computes what `nn.MultiheadAttention.forward` computes (the same
  parameters, masks, causal hint, dropout and returned weights), laid out per head as
  Hugging Face attention is: linear → split q/k/v → view `[B, S, H, D]` → transpose →
  scaled_dot_product_attention → transpose → reshape `[B, S, H·D]` → out_proj. torch's own
  forward folds the heads into the batch (`[S, B·H, D]`), which no channel rule can split;
  this layout names each head, so traced graphs prune whole heads;
- it reads `num_heads` and `head_dim` from the module, never `embed_dim // num_heads`:
  `PrunedMultiheadAttention` keeps `head_dim` and `embed_dim` (the residual width) when heads
  are removed;
- `unsupported(module)` names what it does not express (`add_bias_kv`, `add_zero_attn`, a
  subclass with its own forward); such a module is traced as torch runs it.

Example:
    attention = PrunedMultiheadAttention(embed_dim=32, num_heads=2, head_dim=8, batch_first=True)
    out, _ = attention(x, x, x, need_weights=False)   # x [B, S, 32] -> out [B, S, 32]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PrunedMultiheadAttention", "head_attention", "unsupported"]


def unsupported(module: nn.MultiheadAttention) -> str | None:
    """Why `head_attention` cannot stand in for `module`'s forward, or None if it can."""
    if type(module).forward not in (nn.MultiheadAttention.forward, PrunedMultiheadAttention.forward):
        return f"{type(module).__name__} overrides forward()"
    if module.bias_k is not None or module.bias_v is not None:
        return "add_bias_kv=True appends a learned key/value to every head"
    if module.add_zero_attn:
        return "add_zero_attn=True appends a zero key/value to every head"
    return None


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A bool mask as an additive float mask (True: -inf), as torch's `_canonical_mask` does."""
    if mask is None or torch.is_floating_point(mask):
        return mask
    if mask.dtype != torch.bool:
        raise TypeError(f"only bool and floating-point masks are supported, got {mask.dtype}")
    return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))


def _project(module: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, ...]:
    """q, k, v of width H·D; one linear when query, key and value are one tensor."""
    width = module.num_heads * module.head_dim
    weight, bias = module.in_proj_weight, module.in_proj_bias
    if weight is None:  # separate projections (kdim or vdim differ from embed_dim)
        b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
        return (
            F.linear(query, module.q_proj_weight, b_q),
            F.linear(key, module.k_proj_weight, b_k),
            F.linear(value, module.v_proj_weight, b_v),
        )
    if query is key and key is value:
        return torch.split(F.linear(query, weight, bias), width, dim=-1)
    if key is value:  # cross-attention: one linear for keys and values
        w_q, w_kv = torch.split(weight, [width, 2 * width])
        b_q, b_kv = torch.split(bias, [width, 2 * width]) if bias is not None else (None, None)
        return (F.linear(query, w_q, b_q), *torch.split(F.linear(key, w_kv, b_kv), width, dim=-1))
    w_q, w_k, w_v = torch.split(weight, width)
    b_q, b_k, b_v = torch.split(bias, width) if bias is not None else (None, None, None)
    return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)


def _heads(x: Tensor, heads: int, head_dim: int, batch_first: bool) -> Tensor:
    """`[B, S, H·D]` (or `[S, B, H·D]`) -> `[B, H, S, D]`."""
    split = x.view(x.shape[0], x.shape[1], heads, head_dim)
    return split.transpose(1, 2) if batch_first else split.permute(1, 2, 0, 3)


def head_attention(
    module: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """`nn.MultiheadAttention.forward`, head by head (see the module rules)."""
    heads, head_dim = module.num_heads, module.head_dim
    batched = query.dim() == 3
    batch_first = module.batch_first or not batched
    q, k, v = _project(module, query, key, value)
    if not batched:  # one sequence: a batch of one, batch first
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    q, k, v = (_heads(t, heads, head_dim, batch_first) for t in (q, k, v))
    batch, length, source = q.shape[0], q.shape[2], k.shape[2]

    padding = _float_mask(key_padding_mask, query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
            "module method `generate_square_subsequent_mask` to create this mask."
        )
    causal = is_causal and padding is None and not need_weights  # torch trusts the hint only here
    mask = None if causal else _float_mask(attn_mask, query.dtype)
    if mask is not None:  # [L, S] for every head, or [B·H, L, S] per head
        mask = mask.view(1, 1, length, source) if mask.dim() == 2 else mask.view(batch, heads, length, source)
    if padding is not None:
        padding = padding.view(batch, 1, 1, source)
        mask = padding if mask is None else mask + padding
    dropout = module.dropout if module.training else 0.0

    weights: Tensor | None = None
    if need_weights:
        scores = (q * math.sqrt(1.0 / head_dim)) @ k.transpose(-2, -1)
        weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
        if dropout > 0.0:
            weights = F.dropout(weights, p=dropout)
        out = weights @ v
        weights = weights.mean(dim=1) if average_attn_weights else weights
        weights = weights if batched else weights.squeeze(0)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)

    merged = out.transpose(1, 2) if batch_first else out.permute(2, 0, 1, 3)
    out = F.linear(merged.reshape(*merged.shape[:2], heads * head_dim), module.out_proj.weight, module.out_proj.bias)
    return (out if batched else out.squeeze(0)), weights


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` whose heads do not fill `embed_dim`: what head pruning leaves.

    Rules:
    - `num_heads · head_dim` is the attention width; `embed_dim` stays the model width;
      `in_proj_weight` is `[3·H·D, E]` (or `q/k/v_proj_weight` `[H·D, E|kdim|vdim]`) and
      `out_proj` is `Linear(H·D, E)`; the forward's arguments and results are torch's;
    - `_qkv_same_embed_dim` is False: it is the flag torch's fused fast paths
      (`TransformerEncoderLayer`, nested tensors) check, and they assume `H·D == E`;
    - `add_bias_kv` and `add_zero_attn` are not supported.

    Example:
        attention = PrunedMultiheadAttention(32, num_heads=2, head_dim=8, batch_first=True)
        attention.in_proj_weight.shape   # torch.Size([48, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        def empty(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, device=device, dtype=dtype))

        width = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self._qkv_same_embed_dim = False
        if self.kdim == embed_dim and self.vdim == embed_dim:
            self.in_proj_weight = empty(3 * width, embed_dim)
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = empty(width, embed_dim)
            self.k_proj_weight = empty(width, self.kdim)
            self.v_proj_weight = empty(width, self.vdim)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = empty(3 * width)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(
            width, embed_dim, bias=bias, device=device, dtype=dtype
        )
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's initialisation: Xavier-uniform projections, zero biases."""
        for weight in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if weight is not None:
                nn.init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As `nn.MultiheadAttention.forward`."""
        return head_attention(
            self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
        )

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"batch_first={self.batch_first}"
        )
