"""Elementwise activations a sparse kernel applies as it stores its output, as torch computes them.

Rules:
- `Activation` names what a graph node computes: `RELU` is `aten.relu`, `GELU` is
  `aten.gelu` with `approximate="none"` (x·Φ(x), the erf form BERT uses), `GELU_TANH` is
  `aten.gelu` with `approximate="tanh"` (GPT-2's "gelu_new");
- `activation_of(node)` reads that off an FX node (None when the node is no activation);
- `activation_expr` builds the TIR expression from mul, add, min, max and one division
  only, so it vectorises: LLVM lowers `tir.erf`, `tir.tanh` and `tir.exp` to a scalar libm
  call per element (measured: `callq erff` in a 16-lane loop). erf and tanh are the
  rational approximations Eigen uses (odd degree-13 numerator, even denominator; inputs
  clamped where float32 saturates); against torch's CPU GELU they differ by at most
  1.5e-6 absolute over [-20, 20] (1 ulp of the output), far inside the kernels' 1e-4.

Example:
    act = activation_of(gelu_node)            # Activation.GELU
    y = activation_expr(act, acc[t, i])       # a PrimExpr of the same dtype
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.fx as fx
from tvm import tirx

__all__ = ["Activation", "activation_expr", "activation_of", "reference_activation"]

# erf(x) = x·P(x²)/Q(x²) on [-4, 4], ±1 beyond (float32 rounds erf(4) to 1)
_ERF_CLAMP = 4.0
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
# tanh(x) = x·P(x²)/Q(x²) on [-9, 9], ±1 beyond
_TANH_CLAMP = 9.0
_TANH_P = (
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
)
_TANH_Q = (
    1.19825839466702e-06,
    1.18534705686654e-04,
    2.26843463243900e-03,
    4.89352518554385e-03,
)
_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654
_GELU_CUBIC = 0.044715


class Activation(Enum):
    """An elementwise activation a kernel can apply to bias-added outputs as it stores them."""

    NONE = "none"
    RELU = "relu"
    GELU = "gelu"
    GELU_TANH = "gelu_tanh"


def activation_of(node: fx.Node) -> Activation | None:
    """The activation an ATen graph node computes, or None when it computes something else."""
    if node.op != "call_function":
        return None
    if node.target is torch.ops.aten.relu.default:
        return Activation.RELU
    if node.target is torch.ops.aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return {"none": Activation.GELU, "tanh": Activation.GELU_TANH}.get(str(approximate))
    return None


def reference_activation(activation: Activation, x: torch.Tensor) -> torch.Tensor:
    """What torch computes for `activation` (the reference the kernels are tested against)."""
    if activation is Activation.RELU:
        return torch.relu(x)
    if activation is Activation.GELU:
        return torch.nn.functional.gelu(x)
    if activation is Activation.GELU_TANH:
        return torch.nn.functional.gelu(x, approximate="tanh")
    return x


def activation_expr(activation: Activation, x: tirx.PrimExpr) -> tirx.PrimExpr:
    """`activation` of `x` as a vectorisable float32 TIR expression (x may repeat in it)."""
    if activation is Activation.NONE:
        return x
    if activation is Activation.RELU:
        return tirx.max(x, _f32(0))
    if activation is Activation.GELU:
        return x * _f32(0.5) * (_f32(1) + _erf(x * _f32(_SQRT_HALF)))
    inner = _f32(_SQRT_2_OVER_PI) * (x + _f32(_GELU_CUBIC) * x * x * x)
    return x * _f32(0.5) * (_f32(1) + _tanh(inner))


def _f32(value: float) -> tirx.PrimExpr:
    return tirx.const(value, "float32")


def _odd_rational(
    x: tirx.PrimExpr, clamp: float, numerator: tuple[float, ...], denominator: tuple[float, ...]
) -> tirx.PrimExpr:
    """x·P(x²)/Q(x²) with x clamped to [-clamp, clamp], P and Q by Horner's rule."""
    x = tirx.min(tirx.max(x, _f32(-clamp)), _f32(clamp))
    x2 = x * x
    p = _f32(numerator[0])
    for coefficient in numerator[1:]:
        p = p * x2 + _f32(coefficient)
    q = _f32(denominator[0])
    for coefficient in denominator[1:]:
        q = q * x2 + _f32(coefficient)
    return x * p / q


def _erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _odd_rational(x, _ERF_CLAMP, _ERF_P, _ERF_Q)


def _tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _odd_rational(x, _TANH_CLAMP, _TANH_P, _TANH_Q)
