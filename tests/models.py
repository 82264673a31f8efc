"""Small test models shared by the test suite.

Rules:
- every `make_*()` returns `(model.eval(), example_input)` built from a fixed seed, so two
  calls give identical weights and inputs;
- images are 16x16 and channel counts small, so tracing and pruning take milliseconds;
- BatchNorm running statistics and affine parameters are randomised: an identity BN would
  hide bugs in how norm slices are pruned.

Example:
    model, x = make_cnn_chain()
    graph = sparsec.frontends.trace(model, (x,))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ALL_MODELS",
    "TINY_MLP_IR",
    "DataDependent",
    "ZERO_EQUIVALENT_MODELS",
    "CNNChain",
    "MLP",
    "ResidualCNN",
    "ConcatCNN",
    "DepthwiseSeparable",
    "GroupedConv",
    "SqueezeExcite",
    "FlattenHead",
    "SplitCat",
    "SmallCNN",
    "TinyMLP",
    "TinyMoE",
    "make_hf_moe",
    "make_cnn_chain",
    "make_mlp",
    "make_residual",
    "make_concat",
    "make_depthwise",
    "make_grouped",
    "make_squeeze_excite",
    "make_flatten_head",
    "make_split_cat",
    "make_tiny_mlp",
    "randomize_norms",
]

SEED = 0
IMAGE = 16
BATCH = 2

Example = tuple[nn.Module, torch.Tensor]


def randomize_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.5)


def _conv_bn(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class DataDependent(nn.Module):
    """Branches on a tensor's value in Python: torch.export cannot trace it whole."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class CNNChain(nn.Module):
    """conv -> bn -> relu -> conv -> bn -> relu -> global mean -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.b2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    """linear -> relu -> linear -> relu -> linear."""

    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TinyMLP(nn.Module):
    """Two linear layers, 4 -> 4 -> 2: small enough to spell out its IR in a test."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SmallCNN(nn.Module):
    """conv -> bn -> relu -> conv -> spatial mean -> linear: the backends' round-trip model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class ResidualCNN(nn.Module):
    """stem -> [conv-bn-relu -> conv-bn] + identity -> relu -> mean -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        x = F.relu(x + y)
        return self.fc(x.mean(dim=(2, 3)))


class ConcatCNN(nn.Module):
    """stem -> two conv branches -> cat on channels -> conv -> mean -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.left = _conv_bn(8, 6)
        self.right = _conv_bn(8, 10, k=1)
        self.merge = _conv_bn(16, 12)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.fc(self.merge(x).mean(dim=(2, 3)))


class DepthwiseSeparable(nn.Module):
    """MobileNet-like: stem -> depthwise 3x3 (x2 multiplier) -> pointwise 1x1 -> mean -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.pw = _conv_bn(16, 12, k=1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.dw_bn(self.dw(x)))
        return self.fc(self.pw(x).mean(dim=(2, 3)))


class GroupedConv(nn.Module):
    """stem -> grouped 3x3 conv (groups=2) -> 1x1 conv -> mean -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.grouped = _conv_bn(8, 8, groups=2)
        self.pw = _conv_bn(8, 8, k=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.stem(x))
        return self.fc(self.pw(x).mean(dim=(2, 3)))


class SqueezeExcite(nn.Module):
    """stem -> x * sigmoid(fc2(relu(fc1(mean(x))))) -> conv -> mean -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.se1 = nn.Linear(8, 4)
        self.se2 = nn.Linear(4, 8)
        self.head = _conv_bn(8, 8, k=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        s = torch.sigmoid(self.se2(F.relu(self.se1(x.mean(dim=(2, 3))))))
        x = x * s[:, :, None, None]
        return self.fc(self.head(x).mean(dim=(2, 3)))


class FlattenHead(nn.Module):
    """conv -> bn -> relu -> pool to 4x4 -> flatten (C*4*4 features) -> linear -> relu -> linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = _conv_bn(3, 8)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.hidden = nn.Linear(8 * 4 * 4, 16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.fc(F.relu(self.hidden(x)))


class SplitCat(nn.Module):
    """Channel-shuffle-like: stem -> split [4, 4] -> conv on one half -> cat(other, conv) -> ..."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8)
        self.branch = _conv_bn(4, 4)
        self.mix = _conv_bn(8, 8, k=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = torch.split(x, [4, 4], dim=1)
        x = torch.cat([b, self.branch(a)], dim=1)
        return self.fc(self.mix(x).mean(dim=(2, 3)))


def _factory(build: Callable[[], nn.Module], *shape: int) -> Callable[[], Example]:
    """A `make_*` factory: `build()` under the fixed seed, norms randomised, an input of `shape`."""

    def make() -> Example:
        torch.manual_seed(SEED)
        model = build()
        generator = torch.Generator().manual_seed(SEED + 1)
        randomize_norms(model, generator)
        return model.eval(), torch.randn(*shape, generator=generator)

    return make


_IMAGES = (BATCH, 3, IMAGE, IMAGE)
make_cnn_chain = _factory(CNNChain, *_IMAGES)
make_mlp = _factory(MLP, BATCH, 16)
make_tiny_mlp = _factory(TinyMLP, BATCH, 4)
make_residual = _factory(ResidualCNN, *_IMAGES)
make_concat = _factory(ConcatCNN, *_IMAGES)
make_depthwise = _factory(DepthwiseSeparable, *_IMAGES)
make_grouped = _factory(GroupedConv, *_IMAGES)
make_squeeze_excite = _factory(SqueezeExcite, *_IMAGES)
make_flatten_head = _factory(FlattenHead, *_IMAGES)
make_split_cat = _factory(SplitCat, *_IMAGES)

TINY_MLP_IR = """\
@fc1.weight: f32[4, 4]
@fc1.bias: f32[4]
@fc2.weight: f32[2, 4]
@fc2.bias: f32[2]
%x: f32[batch, 4] = input
%linear: f32[batch, 4] = linear(%x, @fc1.weight, @fc1.bias)
%relu: f32[batch, 4] = relu(%linear)
%linear_1: f32[batch, 2] = linear(%relu, @fc2.weight, @fc2.bias)
return [%linear_1]
"""
"""The text form of `make_tiny_mlp()` traced: the "before" IR of the passes' Before/Expected tests."""


ALL_MODELS: dict[str, Callable[[], Example]] = {
    "cnn_chain": make_cnn_chain,
    "mlp": make_mlp,
    "residual": make_residual,
    "concat": make_concat,
    "depthwise": make_depthwise,
    "grouped": make_grouped,
    "squeeze_excite": make_squeeze_excite,
    "flatten_head": make_flatten_head,
    "split_cat": make_split_cat,
}
"""Every factory by a short id (used as the pytest parameter id)."""

ZERO_EQUIVALENT_MODELS: dict[str, Callable[[], Example]] = dict(ALL_MODELS)
"""Models where zeroing a unit's producer and norm slices makes it contribute exactly nothing.

Filled in below once checked; see test_prune_channels.py for the argument.
"""


class TinyMoE(nn.Module):
    """A Mixtral-style MoE layer in plain torch: softmax router, top-2, renormalised weights,
    each token's experts gathered as `weight[indices]` (the form batched_mm traces to)."""

    def __init__(self, hidden: int = 8, inner: int = 6, experts: int = 4) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(SEED)
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.up = nn.Parameter(torch.randn(experts, inner, hidden, generator=generator) * 0.3)
        self.down = nn.Parameter(torch.randn(experts, hidden, inner, generator=generator) * 0.3)
        with torch.no_grad():
            self.gate.weight.copy_(torch.randn(experts, hidden, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = torch.softmax(self.gate(x), -1).topk(2, -1)
        weights = weights / weights.sum(-1, keepdim=True)
        ids = chosen.reshape(-1)
        h = torch.relu(torch.bmm(self.up[ids], x.repeat_interleave(2, 0).unsqueeze(-1)))
        y = torch.bmm(self.down[ids], h).squeeze(-1) * weights.reshape(-1, 1)
        return y.view(-1, 2, x.shape[-1]).sum(1)


_HF_MOE = {
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", {"num_local_experts": 8, "intermediate_size": 32}),
    "qwen2-moe": (
        "Qwen2MoeForCausalLM", "Qwen2MoeConfig",
        {"num_experts": 8, "intermediate_size": 32, "moe_intermediate_size": 16,
         "shared_expert_intermediate_size": 32},
    ),
    "qwen3-moe": (
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig",
        {"num_experts": 8, "intermediate_size": 32, "moe_intermediate_size": 16, "head_dim": 8},
    ),
}


def make_hf_moe(family: str, **config: object) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A Hugging Face MoE causal LM (`mixtral`, `qwen2-moe`, `qwen3-moe`): hidden 32, 2 layers,
    8 experts, top-2, random weights; and token ids [2, 8]. `config` overrides fields."""
    import transformers

    model_cls, config_cls, fields = _HF_MOE[family]
    torch.manual_seed(SEED)
    settings = {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_experts_per_tok": 2, "vocab_size": 100,
        "max_position_embeddings": 32, "use_cache": False, "attn_implementation": "sdpa",
        **fields, **config,
    }
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**settings))
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(SEED))
    return model.eval(), {"input_ids": ids}
