"""Attention: scaled_dot_product_attention's heads, and grouped-query repetition."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import ChannelFlow, Resize, Resized, _arg, _args, _freeze_axis, _kwargs
from sparsec.ir.opinfo._registry import ShapeFn, macs, resizer, rule

aten = torch.ops.aten

def _sdpa_rep(flow: ChannelFlow, q: Any, k: Any) -> int | None:
    """Query heads per key/value head (GQA), None where it is not a whole number."""
    hq, hk = flow.slot(q, -3), flow.slot(k, -3)
    if hq is None or hk is None:
        return None
    nq, nk = flow.sizes[hq], flow.sizes[hk]
    return nq // nk if nk and nq % nk == 0 else None

@rule(aten.scaled_dot_product_attention.default)
def _sdpa(flow: ChannelFlow, node: fx.Node) -> None:
    """q [..., Hq, L, E], k [..., Hkv, S, E], v [..., Hkv, S, Ev] -> out [..., Hq, L, Ev].

    - batch and head axes link across q, k, v and out; with `enable_gqa` query head j
      links to key/value head j // (Hq / Hkv), so a unit is one kv head with its queries;
    - E links q with k (contraction), Ev links v with out, L links q with out, S links k with v;
    - attn_mask broadcasts onto [..., Hq, L, S] (a per-head bias, as in T5, joins the heads).
    """
    q, k, v = _args(node)[0], _args(node)[1], _args(node)[2]
    mask = _arg(node, 3, "attn_mask")
    gqa = bool(_kwargs(node).get("enable_gqa", False))
    rank = flow.rank(q)
    if rank < 3 or flow.rank(k) != rank or flow.rank(v) != rank:
        for t in (q, k, v, mask, node):
            flow.freeze(t, f"scaled_dot_product_attention %{node.name} with unusual ranks")
        return
    for axis in range(rank - 2):
        flow.identity(flow.slot(q, axis), flow.slot(node, axis))
        flow.identity(flow.slot(k, axis), flow.slot(v, axis))
        if gqa and axis == rank - 3 and flow.rank(q) >= 3:
            rep = _sdpa_rep(flow, q, k)
            qs, ks = flow.slot(q, axis), flow.slot(k, axis)
            if rep is None or qs is None or ks is None:
                for t in (q, k, v, node):
                    _freeze_axis(flow, t, axis, f"grouped-query attention %{node.name} with dynamic or uneven heads")
                continue
            flow.gather(qs, ks, np.arange(flow.sizes[qs]) // rep)
            continue
        ks = flow.slot(k, axis)
        if ks is not None and flow.sizes[ks] == 1:
            continue  # broadcast key/value batch
        flow.identity(flow.slot(q, axis), ks)
    flow.identity(flow.slot(q, -2), flow.slot(node, -2))
    flow.identity(flow.slot(k, -2), flow.slot(v, -2))
    flow.identity(flow.slot(q, -1), flow.slot(k, -1))
    flow.identity(flow.slot(v, -1), flow.slot(node, -1))
    if isinstance(mask, fx.Node):
        # mask [..., L, S]: L and S are the query's and the key's sequence axes
        m_rank = flow.rank(mask)
        targets = [(q, a) for a in range(rank - 1)] + [(k, rank - 2)]
        for axis in range(m_rank):
            t_index = axis + len(targets) - m_rank
            s = flow.slot(mask, axis)
            if t_index < 0 or (s is not None and flow.sizes[s] == 1):
                continue
            target, t_axis = targets[t_index]
            flow.identity(s, flow.slot(target, t_axis))

@resizer(aten.scaled_dot_product_attention.default)
def _resize_sdpa(node: fx.Node, r: Resize) -> Resized | None:
    """The default scale is 1/sqrt(E): pin the original value when E shrinks."""
    q = _args(node)[0]
    new_e = r.new_size(q, -1)
    if new_e is None or _kwargs(node).get("scale") is not None:
        return None
    old_e = q.meta["val"].shape[-1]
    return Resized(tuple(node.args), {**node.kwargs, "scale": 1.0 / float(old_e) ** 0.5})


@macs(aten.scaled_dot_product_attention.default, axes=lambda node: [])
def _sdpa_macs(node: fx.Node, shape: ShapeFn) -> int:
    """Q·Kᵀ and the weighted sum of V: 2 · (batch · heads · queries) · keys · head dim.
    Pruning heads shrinks the surrounding projections; the estimate does not scale this."""
    q, k = shape(_args(node)[0]), shape(_args(node)[1])
    return math.prod(q[:-1]) * k[-2] * q[-1] * 2
