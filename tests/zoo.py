"""A model zoo for structural pruning: one small model of each common family, random weights.

Rules:
- Hugging Face models are built from tiny configs (`from_config`-style constructors), never
  downloaded; `use_cache=False`, eval mode, a fixed seed;
- CNN families are written here in a few lines each, keeping the op patterns that matter
  (bottleneck residuals, dense concatenation, depthwise inverted residuals, channel shuffle,
  squeeze-excitation, channels-last LayerNorm);
- every entry says which layers hold attention heads that must be prunable
  (`attention`: glob patterns of producer layers), so the zoo test can check that heads
  are not frozen.

Example:
    entry = ZOO["bert"]
    model, inputs = entry.build()
    compiled = sparsec.compile(model, inputs, backend="torch", pipeline="structured-50")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "ZooEntry", "hf_available"]

SEED = 0
BATCH = 2
SEQ = 8
VOCAB = 100
# The sizes that the BERT-style encoders (BERT, ViT) and the GQA decoders (Llama, Qwen2) share.
ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "attn_implementation": "sdpa",
}
GQA_DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 32,
    "use_cache": False,
    "attn_implementation": "sdpa",
}


@dataclass(frozen=True)
class ZooEntry:
    """One model family: how to build it, and which of its layers carry attention heads."""

    name: str
    build: Callable[[], tuple[nn.Module, Any]]
    attention: tuple[str, ...] = ()
    needs: str | None = None  # a transformers model class name, if any
    onnx_broken: str = ""  # why ONNX export fails even before pruning, if it does


def hf_available(cls_name: str) -> bool:
    try:
        import transformers
    except ImportError:
        return False
    return hasattr(transformers, cls_name)


def token_inputs(
    *, mask: bool = False, token_types: bool = False, positions: bool = False
) -> Callable[[], dict[str, torch.Tensor]]:
    """Random token ids, plus an all-ones attention mask, zero token types and positions if asked."""

    def inputs() -> dict[str, torch.Tensor]:
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(SEED))
        named = {"input_ids": ids}
        if mask:
            named["attention_mask"] = torch.ones_like(ids)
        if token_types:
            named["token_type_ids"] = torch.zeros_like(ids)
        if positions:
            named["position_ids"] = torch.arange(SEQ).expand(BATCH, SEQ).contiguous()
        return named

    return inputs


def _hf(
    name: str,
    model_cls: str,
    config_cls: str,
    attention: str,
    inputs: Callable[[], Any],
    *,
    onnx_broken: str = "",
    **config: Any,
) -> ZooEntry:
    """A zoo entry for `transformers.<model_cls>` built from a tiny `transformers.<config_cls>`."""

    def build() -> tuple[nn.Module, Any]:
        import transformers

        torch.manual_seed(SEED)
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
        model.eval()
        model.config.use_cache = False
        return model, inputs()

    return ZooEntry(name, build, (attention,), needs=model_cls, onnx_broken=onnx_broken)


# ---------------------------------------------------------------- CNN families in code
def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _image(channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size, generator=torch.Generator().manual_seed(SEED))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand, projection."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), _bn(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = _bn(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), _bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, groups: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), _bn(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(
            Bottleneck(16, 16, 32, groups=groups), Bottleneck(32, 16, 32, groups=groups)
        )
        self.layer2 = nn.Sequential(Bottleneck(32, 32, 64, stride=2, groups=groups))
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.pool(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = _bn(cin), nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2, self.conv2 = _bn(2 * growth), nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        return torch.cat([x, self.conv2(F.relu(self.bn2(y)))], 1)


class DenseNet(nn.Module):
    """DenseNet: each layer concatenates its input with new features; a transition halves."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(16, 8), DenseLayer(24, 8), DenseLayer(32, 8))
        self.trans = nn.Sequential(
            _bn(40), nn.ReLU(), nn.Conv2d(40, 20, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.Sequential(DenseLayer(20, 8), DenseLayer(28, 8))
        self.norm = _bn(36)
        self.fc = nn.Linear(36, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(F.relu(self.norm(x)).mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            _bn(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            _bn(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False),
            _bn(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class SE(nn.Module):
    """Squeeze-excitation: pool, reduce, expand, hardsigmoid gate multiplied into the input."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class MobileNet(nn.Module):
    """MobileNetV2 with a V3-style SE + hardswish block."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), _bn(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 4),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4),
        )
        self.se = SE(24)
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1), nn.Hardswish())
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.se(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (stride 1): split channels, transform one half, concat, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False),
            _bn(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
            _bn(half),
            nn.Conv2d(half, half, 1, bias=False),
            _bn(half),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
        self.conv = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), _bn(64), nn.ReLU())
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.units(self.stem(x))).mean((2, 3)))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise 7x7, permute to channels-last, LayerNorm, MLP, layer scale, back."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, 4)
        self.stem_norm = nn.GroupNorm(1, 32)  # channels-first LN as GroupNorm(1, C)
        self.blocks = nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32))
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_norm(self.stem(x)))
        return self.fc(self.norm(x.mean((2, 3))))


class UNetTiny(nn.Module):
    """Encoder/decoder: pad, group norm, nearest upsampling, skip concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU())
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.mid = nn.Sequential(nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 32, 3))
        self.dec = nn.Conv2d(32 + 16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        m = F.pad(self.mid(self.down(e)), (1, 1, 1, 1))
        u = F.interpolate(m, scale_factor=2.0, mode="nearest")
        return self.out(F.silu(self.dec(torch.cat([u, e], 1))))


def _cnn(cls: Callable[[], nn.Module], size: int = 16) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        torch.manual_seed(SEED)
        return _randomize(cls()), (_image(3, size),)

    return build



# ---------------------------------------------------------------- torch's nn.MultiheadAttention
TORCHVISION = "torchvision.models.vision_transformer"


class MLPBlock(nn.Sequential):
    """torchvision's ViT MLP: linear, GELU, dropout, linear, dropout."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, width), nn.Dropout(0.1))


class EncoderBlock(nn.Module):
    """torchvision's ViT block: pre-norm nn.MultiheadAttention(batch_first=True), called with
    need_weights=False, then a pre-norm MLP, each with its residual."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=0.1, batch_first=True)
        self.dropout = nn.Dropout(0.1)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + input
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, layers: int, heads: int, hidden_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.1)
        self.layers = nn.Sequential(*(EncoderBlock(heads, hidden_dim, mlp_dim) for _ in range(layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(input + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """torchvision's VisionTransformer in miniature (same forward, same attribute names); the
    classes carry torchvision's module name, so sparsec's updaters for torchvision apply."""

    def __init__(self, image_size: int = 32, patch_size: int = 8, hidden_dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden_dim) * 0.02)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq_length, 2, heads, hidden_dim, 2 * hidden_dim)
        self.heads = nn.Sequential(nn.Linear(hidden_dim, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // self.patch_size) * (w // self.patch_size))
        x = torch.cat([self.class_token.expand(n, -1, -1), x.permute(0, 2, 1)], dim=1)
        return self.heads(self.encoder(x)[:, 0])


for _cls in (MLPBlock, EncoderBlock, Encoder, VisionTransformer):
    _cls.__module__ = TORCHVISION


class TokenEncoder(nn.Module):
    """nn.TransformerEncoder over embedded tokens with a key padding mask (1: padding, as an
    integer input so that its sequence axis is dynamic like the ids'); batch_first=False
    layers get the sequence first and give it back batch first."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(VOCAB, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.out = nn.Linear(32, 5)

    def forward(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x, padding = self.embed(ids), padding.bool()
        if self.batch_first:
            return self.out(self.encoder(x, src_key_padding_mask=padding))
        return self.out(self.encoder(x.transpose(0, 1), src_key_padding_mask=padding).transpose(0, 1))


def _token_encoder(batch_first: bool) -> Callable[[], tuple[nn.Module, Any]]:
    def build() -> tuple[nn.Module, Any]:
        torch.manual_seed(SEED)
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(SEED))
        padding = torch.zeros(BATCH, SEQ, dtype=torch.int64)
        padding[1, SEQ // 2 :] = 1
        return TokenEncoder(batch_first).eval(), (ids, padding)

    return build


def _vision_transformer() -> tuple[nn.Module, Any]:
    torch.manual_seed(SEED)
    return VisionTransformer().eval(), (_image(3, 32),)

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        # Explicit token types and positions: BERT otherwise slices fixed-size buffers by the
        # sequence length, which makes torch.export demand an upper bound on the dynamic `seq`.
        _hf(
            "bert",
            "BertForSequenceClassification",
            "BertConfig",
            "*attention.self.query",
            token_inputs(mask=True, token_types=True, positions=True),
            **ENCODER,
            vocab_size=VOCAB,
            max_position_embeddings=32,
            num_labels=3,
        ),
        _hf(
            "distilbert",
            "DistilBertForSequenceClassification",
            "DistilBertConfig",
            "*attention.q_lin",
            token_inputs(mask=True, positions=True),
            dim=64,
            n_layers=2,
            n_heads=4,
            hidden_dim=128,
            vocab_size=VOCAB,
            max_position_embeddings=32,
            num_labels=3,
            attn_implementation="sdpa",
        ),
        _hf(
            "gpt2",
            "GPT2LMHeadModel",
            "GPT2Config",
            "*attn.c_attn",
            token_inputs(),
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=32,
            vocab_size=VOCAB,
            use_cache=False,
            attn_implementation="sdpa",
        ),
        _hf(
            "llama-gqa",
            "LlamaForCausalLM",
            "LlamaConfig",
            "*self_attn.q_proj",
            token_inputs(),
            **GQA_DECODER,
            head_dim=8,
        ),
        _hf(
            "qwen2-gqa",
            "Qwen2ForCausalLM",
            "Qwen2Config",
            "*self_attn.q_proj",
            token_inputs(),
            **GQA_DECODER,
            tie_word_embeddings=True,
        ),
        _hf(
            "t5-encoder",
            "T5EncoderModel",
            "T5Config",
            "*SelfAttention.q",
            token_inputs(),
            onnx_broken="torch.onnx.export of the unpruned graph fails too: the traced "
            "aten.view after transposing the attention output is not viewable under the "
            "exporter's fake strides",
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            vocab_size=VOCAB,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            use_cache=False,
        ),
        _hf(
            "vit",
            "ViTForImageClassification",
            "ViTConfig",
            "*attention.q_proj",
            lambda: (_image(3, 32),),
            **ENCODER,
            image_size=32,
            patch_size=8,
            num_channels=3,
            num_labels=5,
        ),
        ZooEntry("resnet-bottleneck", _cnn(ResNet)),
        ZooEntry("resnext", _cnn(lambda: ResNet(groups=4))),
        ZooEntry("densenet", _cnn(DenseNet)),
        ZooEntry("mobilenetv2-se", _cnn(MobileNet)),
        ZooEntry("shufflenetv2", _cnn(ShuffleNet)),
        ZooEntry("convnext", _cnn(ConvNeXt, size=32)),
        ZooEntry("unet-groupnorm", _cnn(UNetTiny)),
        ZooEntry("torchvision-vit", _vision_transformer, ("*.self_attention",)),
        ZooEntry("transformer-encoder", _token_encoder(True), ("*.self_attn",)),
        ZooEntry("transformer-encoder-seq-first", _token_encoder(False), ("*.self_attn",)),
    ]
}
