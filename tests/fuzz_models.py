"""Random tiny architectures for property-based tests of the pruning passes.

Rules:
- a model is described by a `ModelSpec`: a family ("cnn" on [batch, 3, H, W] or "tokens" on
  [batch, T, F]), a tuple of frozen block specs and a head; the spec's repr is enough to
  rebuild the model (`build_model(spec)`), so a failing example is its own repro;
- every architecture is valid by construction: each block strategy is drawn knowing the
  current channel count (and spatial size), so groups divide channels, splits add up, pools
  never shrink the image below 2x2;
- `model_specs(exact_zero=True)` draws only blocks under which a channel whose producer and
  norm parameters are zero stays exactly zero everywhere (no squeeze-excitation, LayerNorm,
  softmax/attention, sigmoid): removing such a channel must not change the outputs;
- `exclude` names features (block kinds or variants, see `FEATURES`) never to draw, e.g. the
  ones a test marks as known broken.

Example:
    @given(model_specs())
    def test_something(spec):
        model, x = build_model(spec)
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

__all__ = [
    "FEATURES",
    "EXACT_ZERO_FEATURES",
    "ModelSpec",
    "build_model",
    "example_input",
    "model_specs",
    "spec_features",
    # block specs, so that a failing example's repr rebuilds with `from fuzz_models import *`
    "Act",
    "Attention",
    "Concat",
    "ConvBnRelu",
    "Depthwise",
    "Grouped",
    "GroupNormBlock",
    "Head",
    "Linear",
    "MlpResidual",
    "Norm",
    "Pool",
    "Residual",
    "SplitBlock",
    "SqueezeExcite",
    "Stem",
]

# ---------------------------------------------------------------- block specs
# Each block spec records its input channels `c` so a block can be rebuilt on its own.


@dataclass(frozen=True)
class Stem:
    """Conv from the 3 image channels (always first in a CNN)."""

    c_out: int
    k: int
    bn: bool
    bias: bool


@dataclass(frozen=True)
class ConvBnRelu:
    c: int
    c_out: int
    k: int
    bn: bool
    bias: bool
    act: Literal["relu", "none"]


@dataclass(frozen=True)
class Residual:
    """x + conv(relu(bn(conv(x)))), optionally with a BN after the second conv."""

    c: int
    mid: int
    bn: bool
    relu_after: bool


@dataclass(frozen=True)
class Concat:
    """cat([branch(x) for branch], dim=1); a branch of None passes x through."""

    c: int
    branches: tuple[int | None, ...]


@dataclass(frozen=True)
class SplitBlock:
    """Split x along channels, optionally conv some parts, then recombine.

    mode: "sizes" (torch.split with a list), "int" (torch.split with an int), "chunk";
    combine: "cat" (in `order`, parts with a conv get `convs[i]` output channels) or "add"
    (every part gets a conv to `convs[0]` channels and the results are summed).
    """

    c: int
    mode: Literal["sizes", "int", "chunk"]
    arg: tuple[int, ...]
    combine: Literal["cat", "add"]
    convs: tuple[int | None, ...]
    order: tuple[int, ...]


@dataclass(frozen=True)
class Grouped:
    c: int
    c_out: int
    groups: int
    bn: bool


@dataclass(frozen=True)
class Depthwise:
    c: int
    multiplier: int
    bn: bool


@dataclass(frozen=True)
class SqueezeExcite:
    c: int
    mid: int


@dataclass(frozen=True)
class GroupNormBlock:
    """nn.GroupNorm(groups, c) then ReLU."""

    c: int
    groups: int


@dataclass(frozen=True)
class Pool:
    kind: Literal["max", "avg"]


@dataclass(frozen=True)
class Linear:
    c: int
    c_out: int
    bias: bool
    act: Literal["relu", "gelu", "none"]


@dataclass(frozen=True)
class Norm:
    c: int


@dataclass(frozen=True)
class Act:
    kind: Literal["gelu", "relu"]


@dataclass(frozen=True)
class MlpResidual:
    """x + fc2(gelu(fc1(x)))."""

    c: int
    hidden: int
    pre_norm: bool


@dataclass(frozen=True)
class Attention:
    """x + o(attn(q(x), k(x), v(x))) written with view/transpose/matmul/softmax, or sdpa.

    qkv: "separate" linears or one "fused" linear split with torch.split (sizes) or chunk.
    """

    c: int
    heads: int
    impl: Literal["manual", "sdpa"]
    qkv: Literal["separate", "split", "chunk"]
    pre_norm: bool


@dataclass(frozen=True)
class Head:
    """flatten->linear (spatial size > 1), global pool->linear, or token-wise / mean-token linear."""

    kind: Literal["flatten", "gap_mean", "gap_adaptive", "tokens", "token_mean"]
    c: int
    n_out: int


Block = (
    Stem
    | ConvBnRelu
    | Residual
    | Concat
    | SplitBlock
    | Grouped
    | Depthwise
    | SqueezeExcite
    | GroupNormBlock
    | Pool
    | Linear
    | Norm
    | Act
    | MlpResidual
    | Attention
)


@dataclass(frozen=True)
class ModelSpec:
    family: Literal["cnn", "tokens"]
    input_shape: tuple[int, ...]  # without the batch dim
    blocks: tuple[Any, ...]
    head: Head
    seed: int


# ---------------------------------------------------------------- features
def _block_features(b: Any) -> set[str]:
    if isinstance(b, Stem | ConvBnRelu):
        return {"conv"} | ({"batchnorm"} if b.bn else set())
    if isinstance(b, Residual):
        return {"residual", "conv"} | ({"batchnorm"} if b.bn else set())
    if isinstance(b, Concat):
        return {"concat"} | ({"concat_identity"} if None in b.branches else set())
    if isinstance(b, SplitBlock):
        return {f"split_{b.mode}", f"split_{b.combine}"}
    if isinstance(b, Grouped):
        return {"grouped_conv"} | ({"batchnorm"} if b.bn else set())
    if isinstance(b, Depthwise):
        extra = {"depthwise_multiplier"} if b.multiplier > 1 else set()
        return {"depthwise"} | extra | ({"batchnorm"} if b.bn else set())
    if isinstance(b, SqueezeExcite):
        return {"squeeze_excite"}
    if isinstance(b, GroupNormBlock):
        return {"groupnorm"}
    if isinstance(b, Pool):
        return {f"{b.kind}_pool"}
    if isinstance(b, Linear):
        return {"linear"} | ({b.act} if b.act != "none" else set())
    if isinstance(b, Norm):
        return {"layernorm"}
    if isinstance(b, Act):
        return {b.kind}
    if isinstance(b, MlpResidual):
        return {"mlp_residual", "gelu"} | ({"layernorm"} if b.pre_norm else set())
    if isinstance(b, Attention):
        f = {f"attention_{b.impl}", f"attention_qkv_{b.qkv}"}
        return f | ({"layernorm"} if b.pre_norm else set())
    raise TypeError(b)


def spec_features(spec: ModelSpec) -> frozenset[str]:
    """Every feature a spec uses (block kinds, variants, head kind)."""
    out: set[str] = {f"family_{spec.family}", f"head_{spec.head.kind}"}
    for b in spec.blocks:
        out |= _block_features(b)
    return frozenset(out)


FEATURES = frozenset(
    {
        "conv",
        "batchnorm",
        "residual",
        "concat",
        "concat_identity",
        "split_sizes",
        "split_int",
        "split_chunk",
        "split_cat",
        "split_add",
        "grouped_conv",
        "depthwise",
        "depthwise_multiplier",
        "squeeze_excite",
        "groupnorm",
        "max_pool",
        "avg_pool",
        "linear",
        "relu",
        "gelu",
        "layernorm",
        "mlp_residual",
        "attention_manual",
        "attention_sdpa",
        "attention_qkv_separate",
        "attention_qkv_split",
        "attention_qkv_chunk",
        "head_flatten",
        "head_gap_mean",
        "head_gap_adaptive",
        "head_tokens",
        "head_token_mean",
        "family_cnn",
        "family_tokens",
    }
)
"""Names accepted by `model_specs(exclude=...)`."""

NOT_EXACT_ZERO = frozenset(
    {
        "squeeze_excite",
        "groupnorm",
        "layernorm",
        "attention_manual",
        "attention_sdpa",
    }
)
EXACT_ZERO_FEATURES = FEATURES - NOT_EXACT_ZERO
"""Features under which zeroed channels stay exactly zero (see the module docstring)."""


# ---------------------------------------------------------------- strategies
_CH = st.integers(2, 16)


def _ok(exclude: Collection[str], *features: str) -> bool:
    return not any(f in exclude for f in features)


@st.composite
def _composition(draw: Callable[..., Any], total: int, parts: int) -> tuple[int, ...]:
    """`parts` positive integers summing to `total`."""
    cuts = sorted(
        draw(
            st.lists(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1, unique=True)
        )
    )
    bounds = [0, *cuts, total]
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _divisors(n: int, lo: int = 2) -> list[int]:
    return [d for d in range(lo, n + 1) if n % d == 0]


@st.composite
def _cnn_block(draw: Callable[..., Any], c: int, h: int, exclude: frozenset[str]) -> Any:
    kinds = ["conv"]
    if _ok(exclude, "residual", "conv"):
        kinds.append("residual")
    if _ok(exclude, "concat"):
        kinds.append("concat")
    if c >= 2:
        kinds.append("split")
    if _ok(exclude, "grouped_conv") and _divisors(c):
        kinds.append("grouped")
    if _ok(exclude, "depthwise"):
        kinds.append("depthwise")
    if _ok(exclude, "squeeze_excite"):
        kinds.append("se")
    if _ok(exclude, "groupnorm"):
        kinds.append("groupnorm")
    if h >= 4 and h % 2 == 0 and not ("max_pool" in exclude and "avg_pool" in exclude):
        kinds.append("pool")
    kind = draw(st.sampled_from(kinds))
    bn = draw(st.booleans()) if _ok(exclude, "batchnorm") else False
    if kind == "conv":
        act = draw(st.sampled_from(["relu", "none"] if _ok(exclude, "relu") else ["none"]))
        return ConvBnRelu(c, draw(_CH), draw(st.sampled_from([1, 3])), bn, draw(st.booleans()), act)
    if kind == "residual":
        return Residual(c, draw(_CH), bn, draw(st.booleans()) and _ok(exclude, "relu"))
    if kind == "concat":
        n = draw(st.integers(2, 3))
        options = (
            st.one_of(st.none(), st.integers(1, 8))
            if _ok(exclude, "concat_identity")
            else st.integers(1, 8)
        )
        branches = tuple(draw(options) for _ in range(n))
        return Concat(c, branches)
    if kind == "split":
        modes = [m for m in ("sizes", "int", "chunk") if _ok(exclude, f"split_{m}")]
        combines = [m for m in ("cat", "add") if _ok(exclude, f"split_{m}")]
        if not modes or not combines:
            return ConvBnRelu(c, draw(_CH), 1, bn, True, "none")
        mode = draw(st.sampled_from(modes))
        if mode == "sizes":
            arg = draw(_composition(c, draw(st.integers(2, min(3, c)))))
            n_parts = len(arg)
        elif mode == "int":
            size = draw(st.integers(1, c - 1))
            arg = (size,)
            n_parts = -(-c // size)
        else:
            chunks = draw(st.integers(2, min(3, c)))
            arg = (chunks,)
            n_parts = len(torch.zeros(c).chunk(chunks))
        if n_parts > 4:  # keep graphs small
            return ConvBnRelu(c, draw(_CH), 1, bn, True, "none")
        combine = draw(st.sampled_from(combines))
        if combine == "add":
            convs: tuple[int | None, ...] = (draw(_CH),) * n_parts
        else:
            convs = tuple(draw(st.one_of(st.none(), st.integers(1, 8))) for _ in range(n_parts))
        order = tuple(draw(st.permutations(range(n_parts))))
        return SplitBlock(c, mode, arg, combine, convs, order)
    if kind == "grouped":
        g = draw(st.sampled_from(_divisors(c)))
        return Grouped(c, g * draw(st.integers(1, max(1, 16 // g))), g, bn)
    if kind == "depthwise":
        mult = draw(st.sampled_from([1, 2] if _ok(exclude, "depthwise_multiplier") else [1]))
        return Depthwise(c, mult, bn)
    if kind == "se":
        return SqueezeExcite(c, draw(st.integers(1, 8)))
    if kind == "groupnorm":
        return GroupNormBlock(c, draw(st.sampled_from([1, *_divisors(c)])))
    pools = [p for p in ("max", "avg") if _ok(exclude, f"{p}_pool")]
    return Pool(draw(st.sampled_from(pools)))


def _block_out(b: Any, c: int, h: int) -> tuple[int, int]:
    """Channels and spatial size after block `b`."""
    if isinstance(b, Stem | ConvBnRelu | Grouped | Linear):
        return b.c_out, h
    if isinstance(b, Concat):
        return sum(c if x is None else x for x in b.branches), h
    if isinstance(b, SplitBlock):
        if b.combine == "add":
            return b.convs[0], h  # type: ignore[return-value]
        sizes = [t.shape[0] for t in _split(torch.zeros(c), b.mode, b.arg)]
        return sum(sizes[i] if b.convs[i] is None else b.convs[i] for i in b.order), h
    if isinstance(b, Depthwise):
        return c * b.multiplier, h
    if isinstance(b, Pool):
        return c, h // 2
    return c, h


@st.composite
def _token_block(draw: Callable[..., Any], c: int, exclude: frozenset[str]) -> Any:
    kinds = []
    if _ok(exclude, "linear"):
        kinds.append("linear")
    if _ok(exclude, "layernorm"):
        kinds.append("norm")
    if _ok(exclude, "gelu"):
        kinds.append("act")
    if _ok(exclude, "mlp_residual", "gelu"):
        kinds.append("mlp")
    impls = [i for i in ("manual", "sdpa") if _ok(exclude, f"attention_{i}")]
    qkvs = [q for q in ("separate", "split", "chunk") if _ok(exclude, f"attention_qkv_{q}")]
    if impls and qkvs and _divisors(c):
        kinds.append("attention")
    if not kinds:
        return Act("relu")
    kind = draw(st.sampled_from(kinds))
    pre_norm = draw(st.booleans()) and _ok(exclude, "layernorm")
    if kind == "linear":
        acts = [a for a in ("relu", "gelu") if _ok(exclude, a)] + ["none"]
        return Linear(c, draw(_CH), draw(st.booleans()), draw(st.sampled_from(acts)))
    if kind == "norm":
        return Norm(c)
    if kind == "act":
        return Act("gelu")
    if kind == "mlp":
        return MlpResidual(c, draw(_CH), pre_norm)
    heads = draw(st.sampled_from([1, *_divisors(c)]))
    return Attention(c, heads, draw(st.sampled_from(impls)), draw(st.sampled_from(qkvs)), pre_norm)


@st.composite
def model_specs(
    draw: Callable[..., Any],
    *,
    exact_zero: bool = False,
    exclude: Collection[str] = (),
    max_blocks: int = 5,
) -> ModelSpec:
    """A random tiny architecture (see the module docstring)."""
    excl = frozenset(exclude) | (NOT_EXACT_ZERO if exact_zero else frozenset())
    unknown = excl - FEATURES
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; valid: {sorted(FEATURES)}")
    families = [f for f in ("cnn", "tokens") if f"family_{f}" not in excl]
    family = draw(st.sampled_from(families))
    seed = draw(st.integers(0, 2**16))
    n_blocks = draw(st.integers(1, max_blocks))
    blocks: list[Any] = []
    if family == "cnn":
        h = h0 = draw(st.sampled_from([8, 12]))
        stem = Stem(
            draw(_CH),
            draw(st.sampled_from([1, 3])),
            draw(st.booleans()) and _ok(excl, "batchnorm"),
            draw(st.booleans()),
        )
        blocks.append(stem)
        c = stem.c_out
        for _ in range(n_blocks):
            b = draw(_cnn_block(c, h, excl))
            blocks.append(b)
            c, h = _block_out(b, c, h)
        heads = [k for k in ("flatten", "gap_mean", "gap_adaptive") if _ok(excl, f"head_{k}")]
        head = Head(draw(st.sampled_from(heads)), c, draw(st.integers(2, 10)))
        return ModelSpec("cnn", (3, h0, h0), tuple(blocks), head, seed)
    tokens, features = draw(st.integers(4, 6)), draw(_CH)
    # an input projection, so the residual stream is not the (frozen) model input
    first = Linear(features, draw(_CH), draw(st.booleans()), "none")
    blocks.append(first)
    c = first.c_out
    for _ in range(n_blocks):
        b = draw(_token_block(c, excl))
        blocks.append(b)
        c, _ = _block_out(b, c, 0)
    heads = [k for k in ("tokens", "token_mean") if _ok(excl, f"head_{k}")]
    head = Head(draw(st.sampled_from(heads)), c, draw(st.integers(2, 10)))
    return ModelSpec("tokens", (tokens, features), tuple(blocks), head, seed)


# ---------------------------------------------------------------- modules
def _split(
    x: torch.Tensor, mode: str, arg: tuple[int, ...], dim: int = 0
) -> tuple[torch.Tensor, ...]:
    if mode == "sizes":
        return torch.split(x, list(arg), dim)
    if mode == "int":
        return torch.split(x, arg[0], dim)
    return torch.chunk(x, arg[0], dim)


def _conv_unit(
    c: int,
    c_out: int,
    k: int = 3,
    bn: bool = False,
    bias: bool = True,
    groups: int = 1,
    act: str = "none",
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c, c_out, k, padding=k // 2, bias=bias, groups=groups)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    if act == "relu":
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, s: Residual) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_unit(s.c, s.mid, 3, s.bn, act="relu"), _conv_unit(s.mid, s.c, 3, s.bn)
        )
        self.relu_after = s.relu_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.body(x)
        return F.relu(y) if self.relu_after else y


class ConcatBlock(nn.Module):
    def __init__(self, s: Concat) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Identity() if b is None else _conv_unit(s.c, b, 3) for b in s.branches
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class SplitModule(nn.Module):
    def __init__(self, s: SplitBlock) -> None:
        super().__init__()
        self.s = s
        sizes = [t.shape[0] for t in _split(torch.zeros(s.c), s.mode, s.arg)]
        self.convs = nn.ModuleList(
            nn.Identity() if o is None else _conv_unit(n, o, 1)
            for n, o in zip(sizes, s.convs, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [
            conv(p)
            for conv, p in zip(self.convs, _split(x, self.s.mode, self.s.arg, 1), strict=True)
        ]
        if self.s.combine == "add":
            out = parts[0]
            for p in parts[1:]:
                out = out + p
            return out
        return torch.cat([parts[i] for i in self.s.order], dim=1)


class SEBlock(nn.Module):
    def __init__(self, s: SqueezeExcite) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(s.c, s.mid, 1)
        self.fc2 = nn.Conv2d(s.mid, s.c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class MlpBlock(nn.Module):
    def __init__(self, s: MlpResidual) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(s.c) if s.pre_norm else nn.Identity()
        self.fc1, self.fc2 = nn.Linear(s.c, s.hidden), nn.Linear(s.hidden, s.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class AttentionBlock(nn.Module):
    def __init__(self, s: Attention) -> None:
        super().__init__()
        self.s = s
        self.norm = nn.LayerNorm(s.c) if s.pre_norm else nn.Identity()
        if s.qkv == "separate":
            self.q, self.k, self.v = (nn.Linear(s.c, s.c) for _ in range(3))
        else:
            self.qkv = nn.Linear(s.c, 3 * s.c)
        self.o = nn.Linear(s.c, s.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.s.heads
        y = self.norm(x)
        if self.s.qkv == "separate":
            q, k, v = self.q(y), self.k(y), self.v(y)
        elif self.s.qkv == "split":
            q, k, v = torch.split(self.qkv(y), c, dim=-1)
        else:
            q, k, v = self.qkv(y).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in (q, k, v))
        if self.s.impl == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q, k.transpose(-2, -1)) / float(c // h) ** 0.5
            a = torch.matmul(torch.softmax(scores, dim=-1), v)
        return x + self.o(a.transpose(1, 2).reshape(b, t, c))


class HeadModule(nn.Module):
    def __init__(self, s: Head, h: int) -> None:
        super().__init__()
        self.kind = s.kind
        n_in = s.c * h * h if s.kind == "flatten" else s.c
        self.fc = nn.Linear(n_in, s.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "flatten":
            x = torch.flatten(x, 1)
        elif self.kind == "gap_mean":
            x = x.mean((2, 3))
        elif self.kind == "gap_adaptive":
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        elif self.kind == "token_mean":
            x = x.mean(1)
        return self.fc(x)


def _build_block(b: Any) -> nn.Module:
    if isinstance(b, Stem):
        return _conv_unit(3, b.c_out, b.k, b.bn, b.bias)
    if isinstance(b, ConvBnRelu):
        return _conv_unit(b.c, b.c_out, b.k, b.bn, b.bias, act=b.act)
    if isinstance(b, Residual):
        return ResidualBlock(b)
    if isinstance(b, Concat):
        return ConcatBlock(b)
    if isinstance(b, SplitBlock):
        return SplitModule(b)
    if isinstance(b, Grouped):
        return _conv_unit(b.c, b.c_out, 3, b.bn, groups=b.groups, act="relu")
    if isinstance(b, Depthwise):
        return _conv_unit(b.c, b.c * b.multiplier, 3, b.bn, groups=b.c, act="relu")
    if isinstance(b, SqueezeExcite):
        return SEBlock(b)
    if isinstance(b, GroupNormBlock):
        return nn.Sequential(nn.GroupNorm(b.groups, b.c), nn.ReLU())
    if isinstance(b, Pool):
        return nn.MaxPool2d(2) if b.kind == "max" else nn.AvgPool2d(2)
    if isinstance(b, Linear):
        act = {"relu": nn.ReLU(), "gelu": nn.GELU(), "none": nn.Identity()}[b.act]
        return nn.Sequential(nn.Linear(b.c, b.c_out, bias=b.bias), act)
    if isinstance(b, Norm):
        return nn.LayerNorm(b.c)
    if isinstance(b, Act):
        return nn.GELU() if b.kind == "gelu" else nn.ReLU()
    if isinstance(b, MlpResidual):
        return MlpBlock(b)
    if isinstance(b, Attention):
        return AttentionBlock(b)
    raise TypeError(b)


def _randomize(model: nn.Module) -> None:
    """Non-trivial norms: random affine parameters and running statistics."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def build_model(spec: ModelSpec, batch: int = 2) -> tuple[nn.Module, torch.Tensor]:
    """The spec's model in eval mode (deterministic weights from `spec.seed`) and an input."""
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        h = spec.input_shape[1]
        layers = []
        for b in spec.blocks:
            layers.append(_build_block(b))
            if isinstance(b, Pool):
                h //= 2
        layers.append(HeadModule(spec.head, h))
        model = nn.Sequential(*layers)
        with torch.no_grad():
            _randomize(model)
        model.eval()
        x = torch.randn(batch, *spec.input_shape)
    return model, x


def example_input(spec: ModelSpec, batch: int, seed: int = 0) -> torch.Tensor:
    """A deterministic input of the spec's shape at `batch`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *spec.input_shape, generator=g)
