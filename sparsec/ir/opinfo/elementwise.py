"""Elementwise ops: unary and broadcasting binary ops link every axis with their inputs'."""

from __future__ import annotations

import torch
import torch.fx as fx

from sparsec.ir.opinfo._flow import ChannelFlow, _args
from sparsec.ir.opinfo._registry import index_values, rule

aten = torch.ops.aten

_UNARY = [
    aten.relu.default, aten.relu_.default, aten.gelu.default, aten.silu.default,
    aten.silu_.default, aten.sigmoid.default, aten.tanh.default, aten.hardswish.default,
    aten.hardswish_.default, aten.hardsigmoid.default, aten.hardtanh.default,
    aten.hardtanh_.default, aten.relu6.default, aten.leaky_relu.default, aten.elu.default,
    aten.softplus.default, aten.mish.default, aten.dropout.default, aten.clone.default,
    aten.contiguous.default, aten.neg.default, aten.abs.default, aten.exp.default,
    aten.sqrt.default, aten.rsqrt.default, aten.pow.Tensor_Scalar, aten.square.default,
    aten.alias.default, aten.detach.default, aten._to_copy.default, aten.to.dtype,
    aten.to.dtype_layout, aten.type_as.default, aten.erf.default, aten.log.default,
    aten.reciprocal.default, aten.softmax.int, aten.log_softmax.int, aten._softmax.default,
    aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar, aten.clamp.default,
    aten.clamp_min.default, aten.clamp_max.default, aten.native_dropout.default,
]

# Copies and casts keep index values (topk's) indexing the same slot.
index_values(
    "kept", aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default,
    aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout,
)

@rule(*_UNARY)
def _unary(flow: ChannelFlow, node: fx.Node) -> None:
    flow.identity_all(_args(node)[0], node)

_BINARY = [
    aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.mul_.Tensor,
    aten.multiply.Tensor, aten.div.Tensor, aten.div_.Tensor, aten.maximum.default, aten.minimum.default, aten.where.self,
    aten.pow.Tensor_Tensor, aten.rsub.Tensor,
]

@rule(*_BINARY)
def _binary(flow: ChannelFlow, node: fx.Node) -> None:
    for arg in node.args:
        if isinstance(arg, fx.Node):
            flow.broadcast(arg, node)

# Unary (and tensor-with-scalar) ops: the output has the input's shape, element for element.
_MORE_UNARY = [
    aten.cos.default, aten.sin.default, aten.floor.default, aten.ceil.default,
    aten.round.default, aten.sign.default, aten.logical_not.default, aten.bitwise_not.default,
    aten.isnan.default, aten.to.device, aten.to.other, aten.lift_fresh_copy.default,
    aten.eq.Scalar, aten.ne.Scalar, aten.lt.Scalar, aten.le.Scalar, aten.gt.Scalar,
    aten.ge.Scalar, aten.fill.Scalar, aten.zeros_like.default, aten.ones_like.default,
    aten.full_like.default, aten.empty_like.default,
    aten.log1p.default, aten.expm1.default, aten.sigmoid_.default, aten.tanh_.default,
    aten.gelu_.default, aten.clamp_.default, aten.pow.Scalar,
    aten.dropout_.default, aten.detach_.default, aten.hardsigmoid_.default,
    aten.leaky_relu_.default, aten.elu_.default, aten.zero_.default, aten.fill_.Scalar,
    aten.fill_.Tensor,
    aten.remainder.Scalar, aten.floor_divide.Scalar if hasattr(aten.floor_divide, "Scalar") else aten.floor_divide.default,
]

for _op in _MORE_UNARY:
    rule(_op)(_unary)

# Broadcasting ops over several tensors (masks, comparisons, selects).
_MORE_BINARY = [
    aten.eq.Tensor, aten.ne.Tensor, aten.lt.Tensor, aten.le.Tensor, aten.gt.Tensor,
    aten.ge.Tensor, aten.__and__.Tensor, aten.__or__.Tensor, aten.bitwise_and.Tensor,
    aten.bitwise_or.Tensor, aten.logical_and.default, aten.logical_or.default,
    aten.where.ScalarOther, aten.where.ScalarSelf, aten.masked_fill.Tensor,
    aten.min.other, aten.max.other, aten.floor_divide.default, aten.remainder.Tensor,
    aten.div.Tensor_mode, aten.atan2.default,
]

for _op in _MORE_BINARY:
    rule(_op)(_binary)

# masked_fill.Scalar(x, mask, value): the mask broadcasts like a second operand. The in-place
# form is what torch's mask canonicalisation (`F._canonical_mask`) traces to.
rule(aten.masked_fill.Scalar, aten.masked_fill_.Scalar)(_binary)
