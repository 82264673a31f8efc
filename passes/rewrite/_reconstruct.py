"""Least-squares reconstruction: refit the layers that read pruned channels so their outputs
match the unpruned model's on calibration data (ThiNet / He et al. 2017, without training).

Rules:
- layers are refit one at a time in graph order; each refit sees the inputs of the pruned
  graph with every earlier refit applied, and targets the *original* model's output of the
  same layer (restricted to the output channels it keeps);
- per layer, XᵀX, XᵀY and ‖Y‖² are running sums over the batches (a conv's input is
  unfolded into patches first), then (XᵀX + λ·mean(diag XᵀX)·I) W = XᵀY is solved in float64;
  a layer with a bias refits it as a column of ones;
- refits only conv2d with groups=1 and linear layers; others are listed as skipped;
- the relative error ‖XW - Y‖² / ‖Y‖² before and after the refit is reported per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from sparsec.calibration import Calibration
from sparsec.ir import Graph, Rewriter
from sparsec.passes.analysis._streaming import tap

__all__ = ["LayerFit", "refit_layer"]

aten = torch.ops.aten


@dataclass(frozen=True)
class LayerFit:
    """One refit layer: its name and relative output error before and after."""

    layer: str
    error_before: float
    error_after: float


def _conv_args(op: fx.Node) -> tuple[Any, Any, Any, int]:
    args = list(op.args) + [None] * (7 - len(op.args))
    stride = args[3] if args[3] is not None else op.kwargs.get("stride", 1)
    padding = args[4] if args[4] is not None else op.kwargs.get("padding", 0)
    dilation = args[5] if args[5] is not None else op.kwargs.get("dilation", 1)
    groups: Any = args[6] if args[6] is not None else op.kwargs.get("groups", 1)
    return stride, padding, dilation, int(groups)


def refusal(op: fx.Node) -> str | None:
    """Why `op` cannot be refit, or None."""
    if op.target is aten.linear.default:
        return None
    if op.target is not aten.conv2d.default:
        return f"{op.target} is not refit (conv2d and linear only)"
    padding = _conv_args(op)[1]
    if isinstance(padding, str):
        return f"conv2d with padding={padding!r} is not refit"
    if _conv_args(op)[3] != 1:
        return "grouped conv2d is not refit"
    return None


def _rows(op: fx.Node, x: torch.Tensor, weight_shape: torch.Size) -> torch.Tensor:
    """The layer's input as a (samples, features) matrix: patches for a conv."""
    if op.target is aten.linear.default:
        return x.reshape(-1, x.shape[-1])
    stride, padding, dilation, _ = _conv_args(op)
    patches = F.unfold(
        x, tuple(weight_shape[2:]), dilation=dilation, padding=padding, stride=stride
    )
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _targets(op: fx.Node, y: torch.Tensor, keep: np.ndarray | None) -> torch.Tensor:
    if keep is not None:
        axis = 1 if op.target is aten.conv2d.default else y.dim() - 1
        y = y.index_select(axis, torch.as_tensor(keep))
    if op.target is aten.linear.default:
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])


def refit_layer(
    graph: Graph,
    rw: Rewriter,
    reference: fx.GraphModule,
    calibration: Calibration,
    op_name: str,
    keep: np.ndarray | None,
    ridge: float,
) -> LayerFit:
    """Refit one conv/linear layer of `graph` to the `reference` output of the same node."""
    op = graph.node(op_name)
    weight_node, bias_node = op.args[1], op.args[2] if len(op.args) > 2 else None
    assert isinstance(weight_node, fx.Node) and isinstance(op.args[0], fx.Node)
    weight = graph.tensor(str(weight_node.target)).detach().double()
    has_bias = isinstance(bias_node, fx.Node)
    w = weight.reshape(weight.shape[0], -1).T
    if has_bias:
        w = torch.cat([w, graph.tensor(str(bias_node.target)).detach().double()[None]])  # type: ignore[union-attr]
    xtx = torch.zeros(w.shape[0], w.shape[0], dtype=torch.float64)
    xty = torch.zeros_like(w)
    yty, before = 0.0, 0.0
    captured: dict[str, torch.Tensor] = {}
    input_name = op.args[0].name
    for args, kwargs in calibration:
        tap(
            reference,
            args,
            kwargs,
            watch={op_name: lambda v: captured.__setitem__("y", v)},
            stop_after=op_name,
        )
        tap(
            graph.module,
            args,
            kwargs,
            watch={input_name: lambda v: captured.__setitem__("x", v)},
            stop_after=input_name,
        )
        x = _rows(op, captured.pop("x").double(), weight.shape)
        if has_bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
        y = _targets(op, captured.pop("y").double(), keep)
        xtx += x.T @ x
        xty += x.T @ y
        yty += float(y.square().sum())
        before += float((x @ w - y).square().sum())
    damping = ridge * float(xtx.diagonal().mean()) + 1e-12
    solved = torch.linalg.solve(xtx + damping * torch.eye(len(xtx), dtype=torch.float64), xty)
    after = float((solved * (xtx @ solved)).sum() - 2 * (solved * xty).sum() + yty)
    dtype = graph.tensor(str(weight_node.target)).dtype
    columns = solved[:-1] if has_bias else solved
    rw.replace_tensor(
        str(weight_node.target), columns.T.reshape(weight.shape).to(dtype).contiguous()
    )
    if has_bias:
        rw.replace_tensor(str(bias_node.target), solved[-1].to(dtype).contiguous())  # type: ignore[union-attr]
    scale = max(yty, 1e-30)
    return LayerFit(
        str(weight_node.target).rsplit(".", 1)[0], before / scale, max(after, 0.0) / scale
    )
