"""Handlers of the `com.microsoft` fused ops that ONNX Runtime's transformer optimizer writes.

Rules:
- each fused op is decomposed into the torch ops of its definition (ORT's contrib operator
  documentation), so the dependency analysis sees ordinary linears, norms and attention;
- the packed QKV weights of `Attention` are split into three linears by the preparation
  (`_prepare`), which leaves the attention itself as `sparsec::AttentionCore` here;
- masks: `mask_index` of rank 1 (valid lengths) or 2 (raw 1/0 masks) are supported; other
  forms and past key/value state are refused by the loader with the node named.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparsec.frontends.onnx._ops_standard import rms_norm
from sparsec.frontends.onnx._registry import MICROSOFT_DOMAIN, SPARSEC_DOMAIN, Call, op
from sparsec.frontends.onnx._values import Value, to_tensor

__all__: list[str] = []


def _bias(x: Value, bias: Value | None) -> torch.Tensor:
    return to_tensor(x) if bias is None else to_tensor(x) + to_tensor(bias)


@op("Gelu", domain=MICROSOFT_DOMAIN)
def _gelu(call: Call, x: Value) -> Value:
    return F.gelu(to_tensor(x))


@op("BiasGelu", domain=MICROSOFT_DOMAIN)
def _bias_gelu(call: Call, x: Value, bias: Value) -> Value:
    return F.gelu(_bias(x, bias))


@op("FastGelu", domain=MICROSOFT_DOMAIN)
def _fast_gelu(call: Call, x: Value, bias: Value | None = None) -> Value:
    return F.gelu(_bias(x, bias), approximate="tanh")


@op("QuickGelu", domain=MICROSOFT_DOMAIN)
def _quick_gelu(call: Call, x: Value) -> Value:
    data = to_tensor(x)
    return data * torch.sigmoid(data * call.attr("alpha", 1.702))


@op("SkipLayerNormalization", domain=MICROSOFT_DOMAIN)
def _skip_layer_norm(
    call: Call, x: Value, skip: Value, gamma: Value, beta: Value | None = None, bias: Value | None = None
) -> tuple[Value, None, None, Value]:
    total = _bias(to_tensor(x) + to_tensor(skip), bias)
    out = F.layer_norm(
        total, (total.shape[-1],), to_tensor(gamma), None if beta is None else to_tensor(beta),
        call.attr("epsilon", 1e-12),
    )
    return out, None, None, total


@op("SkipSimplifiedLayerNormalization", domain=MICROSOFT_DOMAIN)
def _skip_rms_norm(
    call: Call, x: Value, skip: Value, gamma: Value, bias: Value | None = None
) -> tuple[Value, None, None, Value]:
    total = _bias(to_tensor(x) + to_tensor(skip), bias)
    return rms_norm(total, to_tensor(gamma), -1, call.attr("epsilon", 1e-6)), None, None, total


@op("EmbedLayerNormalization", domain=MICROSOFT_DOMAIN)
def _embed_layer_norm(
    call: Call, input_ids: Value, segment_ids: Value | None, word: Value, position: Value,
    segment: Value | None, gamma: Value, beta: Value, mask: Value | None = None,
    position_ids: Value | None = None,
) -> tuple[Value, Value, Value]:
    ids = to_tensor(input_ids).long()
    positions = (
        torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
        if position_ids is None else to_tensor(position_ids).long()
    )
    total = F.embedding(ids, to_tensor(word)) + F.embedding(positions, to_tensor(position))
    if segment_ids is not None and segment is not None:
        total = total + F.embedding(to_tensor(segment_ids).long(), to_tensor(segment))
    out = F.layer_norm(total, (total.shape[-1],), to_tensor(gamma), to_tensor(beta), call.attr("epsilon", 1e-12))
    if mask is None:
        lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.int32)
    else:
        lengths = to_tensor(mask).to(torch.int32).sum(dim=1, dtype=torch.int32)
    return out, lengths, total


def _additive_mask(
    mask: torch.Tensor, keys: int | torch.SymInt, fill: float, dtype: torch.dtype
) -> torch.Tensor:
    """[B, 1, 1, keys] additive mask from valid lengths [B] or a raw 1/0 mask [B, keys]."""
    if mask.dim() == 1:
        positions = torch.arange(keys).unsqueeze(0)
        keep = positions < mask.to(torch.int64).unsqueeze(1)
    else:
        keep = mask != 0
    return ((~keep).to(dtype) * fill)[:, None, None, :]


@op("AttentionCore", domain=SPARSEC_DOMAIN)
def _attention_core(
    call: Call, q: Value, k: Value, v: Value, mask_index: Value | None = None
) -> Value:
    """softmax(QKᵀ·scale + mask)·V over heads, for projections [B, S, heads·D] as ORT's
    Attention defines it."""
    heads = call.attr("num_heads")
    query, key, value = to_tensor(q), to_tensor(k), to_tensor(v)
    batch, seq = query.shape[0], query.shape[1]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2)

    qh, kh, vh = split(query), split(key), split(value)
    scale = call.attr("scale") or 1.0 / math.sqrt(qh.shape[-1])
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if mask_index is not None:
        scores = scores + _additive_mask(
            to_tensor(mask_index), kh.shape[2], call.attr("mask_filter_value", -10000.0), scores.dtype
        )
    if call.attr("unidirectional", 0):
        causal = torch.ones(seq, kh.shape[2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    out = torch.matmul(torch.softmax(scores, dim=-1), vh)
    return out.transpose(1, 2).reshape(batch, seq, -1)
