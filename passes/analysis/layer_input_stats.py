"""Statistics of what each linear or conv layer reads, streamed over calibration batches.

Rules:
- a "layer" is an `aten.linear` node whose weight is a 2-D get_attr (input rows: the input
  flattened to `[-1, in_features]`) or, with "conv" in `layers`, an `aten.conv1d`/`conv2d`
  node (either overload; `padding="same"` included) whose weight is a get_attr; a conv's
  rows are its unfolded input (im2col), one row per output position, with columns in the
  order of `weight_matrix`'s view (kernel position outer, input channel inner), so a
  statistic of column j belongs to column j of the conv's `[out, kernel · in/groups]` matrix;
- a grouped conv's rows are `[rows, groups, kernel · in/groups]` (each group reads its own
  channels), so its sums carry a leading groups axis; a conv is unfolded a few samples at a
  time (at most `_CHUNK_ELEMENTS` unfolded values), never a whole batch at once;
- per layer: the row count, the sum of squares of each input column (Wanda's ‖X_j‖²) and,
  with `gram=True`, the Gram matrix XᵀX (SparseGPT's Hessian up to a factor 2/rows);
- `StagedCalibration` runs the graph one stage (a few layers and the nodes before them) at
  a time over every batch, keeping only the values that cross into later stages: memory is
  bounded by (batches × boundary values) + one stage's work, never the whole model's
  activations; `peak_bytes` records the largest boundary it held;
- `weights` overrides graph tensors by target, so a caller can replace a stage's weights
  between `stats` and `advance` without editing the graph (SparseGPT's sequential order);
- the `layer-input-stats` analysis is the one-shot case (the dense graph's inputs).

Example:
    stats = am.get(LayerInputStats(gram=False))["fc1.weight"].column_norms()
    conv = am.get(LayerInputStats(gram=True, layers=("linear", "conv")))["conv1.weight"].gram
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F
from pydantic import Field
from torch.utils import _pytree as pytree

from sparsec.calibration import Calibration, require_calibration
from sparsec.ir import Graph
from sparsec.ir.opinfo import LayerKind, op_info
from sparsec.pipeline import Analysis, AnalysisManager, pass_dataclass, register

__all__ = [
    "ConvSpec",
    "InputStats",
    "LayerInputStats",
    "LayerKind",
    "StagedCalibration",
    "conv_spec",
    "input_rows",
    "linear_rows",
    "weight_layers",
]

aten = torch.ops.aten
_UNFOLDED_SPATIAL_DIMS = (1, 2)  # conv1d and conv2d inputs are unfolded; conv3d is not
_CHUNK_ELEMENTS = 1 << 23
"""The most unfolded input values a conv's statistics hold at once (32 MiB in float32)."""


def weight_layers(graph: Graph, kinds: tuple[LayerKind, ...] = ("linear",)) -> list[fx.Node]:
    """Linear (and, with "conv" in `kinds`, conv1d/conv2d) nodes with a get_attr weight of the
    right rank, in graph order."""
    layers = []
    for node in graph.module.graph.nodes:
        if node.op != "call_function" or len(node.args) < 2:
            continue
        weight = node.args[1]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        info = op_info(node.target)
        if info is None or info.layer not in kinds or info.weight_arg != 1:
            continue
        rank = graph.tensor(str(weight.target)).dim()
        linear = info.layer == "linear" and rank == 2
        conv = info.spatial_dims in _UNFOLDED_SPATIAL_DIMS and rank == info.spatial_dims + 2
        if linear or conv:
            layers.append(node)
    return layers


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _per_dim(value: Any, spatial: int) -> tuple[int, ...]:
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return tuple(values * spatial if len(values) == 1 else values)


@dataclass(frozen=True)
class ConvSpec:
    """A conv node's geometry: kernel, stride, (before, after) padding, dilation, groups."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int

    @property
    def is_pointwise(self) -> bool:
        """A 1×1 kernel, stride 1, no padding: a linear over channels (dilation is moot)."""
        return (
            all(k == 1 for k in self.kernel)
            and all(s == 1 for s in self.stride)
            and all(p == (0, 0) for p in self.padding)
        )


def conv_spec(node: fx.Node, weight_shape: tuple[int, ...] | torch.Size) -> ConvSpec:
    """The geometry of a conv1d/conv2d node whose weight has `weight_shape`."""
    kernel = tuple(int(k) for k in weight_shape[2:])
    spatial = len(kernel)
    stride = _per_dim(_arg(node, 3, "stride", 1), spatial)
    dilation = _per_dim(_arg(node, 5, "dilation", 1), spatial)
    string_padding = node.target in (aten.conv1d.padding, aten.conv2d.padding)
    padding_arg = _arg(node, 4, "padding", "valid" if string_padding else 0)
    if padding_arg == "same":
        # torch pads d·(k−1) in total, the odd one on the right (as aten's _convolution_mode)
        totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        padding = tuple((t // 2, t - t // 2) for t in totals)
    elif padding_arg == "valid":
        padding = tuple((0, 0) for _ in kernel)
    else:
        padding = tuple((p, p) for p in _per_dim(padding_arg, spatial))
    return ConvSpec(kernel, stride, padding, dilation, int(_arg(node, 6, "groups", 1)))


def _unfold(x: torch.Tensor, spec: ConvSpec) -> Iterator[torch.Tensor]:
    """A conv input's im2col rows, a few samples at a time, in `weight_matrix` column order."""
    spatial = len(spec.kernel)
    if x.dim() == spatial + 1:  # an unbatched conv input
        x = x.unsqueeze(0)
    kernel, stride, dilation, padding = spec.kernel, spec.stride, spec.dilation, spec.padding
    if spatial == 1:  # as a conv2d over a height-1 image
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, *kernel), (1, *stride), (1, *dilation)
        padding = ((0, 0), *padding)
    pads = [p for before_after in reversed(padding) for p in before_after]
    positions = math.prod(kernel)
    channels = x.shape[1]
    per_group = channels // spec.groups
    chunk = max(1, _CHUNK_ELEMENTS // max(1, x[:1].numel() * positions))
    for part in x.detach().split(chunk):
        part = F.pad(part.float(), pads) if any(pads) else part.float()
        cols = F.unfold(part, kernel, dilation=dilation, stride=stride)  # [b, C·k, L], C outer
        samples, _, length = cols.shape
        cols = cols.reshape(samples, spec.groups, per_group, positions, length)
        cols = cols.permute(0, 4, 1, 3, 2).reshape(samples * length, spec.groups, -1)
        yield cols[:, 0] if spec.groups == 1 else cols


def linear_rows(x: torch.Tensor) -> torch.Tensor:
    """A linear layer's input as float32 rows `[-1, in_features]` (what its statistics sum)."""
    return x.detach().reshape(-1, x.shape[-1]).float()


def input_rows(node: fx.Node, args: tuple[Any, ...]) -> Iterator[torch.Tensor]:
    """The rows a layer node reads, given its evaluated arguments: `[rows, in]` for a linear
    or an ungrouped conv, `[rows, groups, kernel · in/groups]` for a grouped conv."""
    x, weight = args[0], args[1]
    if node.target is aten.linear.default:
        yield linear_rows(x)
    else:
        yield from _unfold(x, conv_spec(node, weight.shape))


@dataclass
class InputStats:
    """Running sums over the rows a layer read (a leading groups axis for a grouped conv)."""

    rows: int = 0
    square_sums: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def add(self, rows: torch.Tensor, with_gram: bool) -> None:
        """Add `[n, in]` rows, or `[n, groups, in per group]` rows of a grouped conv."""
        self.rows += rows.shape[0]
        squares = rows.pow(2).sum(0)
        self.square_sums = squares if self.square_sums is None else self.square_sums + squares
        if with_gram:
            product = (
                rows.t() @ rows if rows.dim() == 2 else torch.einsum("ngi,ngj->gij", rows, rows)
            )
            self.gram = product if self.gram is None else self.gram + product

    def column_norms(self) -> torch.Tensor:
        """‖X_j‖₂ for each input column j (Wanda's activation factor)."""
        if self.square_sums is None:
            raise ValueError("no calibration rows reached this layer")
        return self.square_sums.sqrt()


@dataclass
class StagedCalibration:
    """Runs calibration through the graph in stages of `layers_per_stage` layers of `kinds`."""

    graph: Graph
    calibration: Calibration
    layers_per_stage: int = 1
    kinds: tuple[LayerKind, ...] = ("linear",)
    peak_bytes: int = 0
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    _states: list[dict[fx.Node, Any]] = field(default_factory=list)
    _stages: list[list[fx.Node]] = field(default_factory=list)
    _layers: set[fx.Node] = field(default_factory=set)

    def __post_init__(self) -> None:
        nodes = [n for n in self.graph.module.graph.nodes if n.op != "output"]
        self._layers = layers = set(weight_layers(self.graph, self.kinds))
        stage: list[fx.Node] = []
        count = 0
        for node in nodes:
            stage.append(node)
            if node in layers:
                count += 1
                if count == self.layers_per_stage:
                    self._stages.append(stage)
                    stage, count = [], 0
        if stage:
            self._stages.append(stage)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        spec = self.graph.module._in_spec
        for args, kwargs in self.calibration:
            keys = list(spec.children()[1].context or [])
            leaves = pytree.tree_leaves((tuple(args), {k: kwargs[k] for k in keys}))
            self._states.append(dict(zip(placeholders, leaves, strict=True)))

    @property
    def stages(self) -> list[list[fx.Node]]:
        return self._stages

    def layers(self, stage: int) -> list[fx.Node]:
        """The layers of `stage`, in order."""
        return [n for n in self._stages[stage] if n in self._layers]

    def _value(self, env: dict[fx.Node, Any], node: fx.Node) -> Any:
        """A node's value: computed in `env`, or a weight read now (never held in a state)."""
        if node.op == "get_attr":
            target = str(node.target)
            return self.weights[target] if target in self.weights else self.graph.tensor(target)
        return env[node]

    def _run(self, stage: int, env: dict[fx.Node, Any], hook: Any = None) -> None:
        for node in self._stages[stage]:
            if node.op in ("placeholder", "get_attr"):
                continue
            args = fx.node.map_arg(node.args, lambda a: self._value(env, a))
            kwargs = fx.node.map_arg(node.kwargs, lambda a: self._value(env, a))
            if hook is not None:
                hook(node, args)
            env[node] = node.target(*args, **kwargs)

    def stats(self, stage: int, *, gram: bool) -> dict[str, InputStats]:
        """Input statistics of `stage`'s layers under the graph's current weights."""
        wanted = set(self.layers(stage))
        stats = {str(n.args[1].target): InputStats() for n in wanted}  # type: ignore[union-attr]

        def hook(node: fx.Node, args: tuple[Any, ...]) -> None:
            if node in wanted:
                for rows in input_rows(node, args):
                    stats[str(node.args[1].target)].add(rows, gram)  # type: ignore[union-attr]

        with torch.no_grad():
            for state in self._states:
                env = dict(state)
                self._run(stage, env, hook)
        return stats

    def advance(self, stage: int) -> None:
        """Run `stage` with the current weights; keep only values later stages read."""
        later = {n for s in self._stages[stage + 1 :] for n in s}
        total = 0
        with torch.no_grad():
            for index, state in enumerate(self._states):
                env = dict(state)
                self._run(stage, env)
                kept = {
                    node: value
                    for node, value in env.items()
                    if any(user in later for user in node.users)
                }
                self._states[index] = kept
                total += sum(
                    leaf.numel() * leaf.element_size()
                    for leaf in pytree.tree_leaves(list(kept.values()))
                    if isinstance(leaf, torch.Tensor)
                )
        self.peak_bytes = max(self.peak_bytes, total)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._stages)))


@register
@pass_dataclass
class LayerInputStats(Analysis):
    """Per layer of `layers` (by weight target): row count, ‖X_j‖² and optionally XᵀX."""

    name: ClassVar[str] = "layer-input-stats"
    gram: bool = False
    layers: Annotated[tuple[LayerKind, ...], Field(min_length=1)] = ("linear",)

    def run(self, graph: Graph, am: AnalysisManager) -> dict[str, InputStats]:
        calibration = require_calibration(am.calibration, self.name)
        count = max(1, len(weight_layers(graph, self.layers)))
        runner = StagedCalibration(graph, calibration, layers_per_stage=count, kinds=self.layers)
        # one stage holds every layer: one pass over the batches, one batch at a time
        return runner.stats(0, gram=self.gram) if runner.stages else {}
