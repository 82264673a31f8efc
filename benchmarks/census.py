"""Census of missing op rules: which frozen groups are frozen only because an op has no rule.

Rules:
- every model is traced (`sparsec.frontends.trace`) and analysed with `dependency-groups`;
  nothing is pruned (unless `--compile`), so the census is fast and needs no weights;
- models: the zoo (tests/zoo.py), the Hugging Face families below built from tiny configs
  (random weights, `use_cache=False`, eval mode), small modules that rebuild torchvision op
  patterns the zoo lacks (`PATTERNS`), and, where torchvision is importable (it is
  kept out of the main environment: run this from a benchmark environment that has it),
  every torchvision classification model (`list_models(module=torchvision.models)`,
  `weights=None`, batch 2 at 224x224 for ViT/Swin/MaxViT, which need it, 128x128 elsewhere);
  a model that fails to build or trace is a row with the reason, never dropped; one that
  torch.export cannot trace with a dynamic batch and sequence is traced with static shapes
  (the ops are what the census reads; the row says so);
- a frozen group is a *missing-rule* group when one of its frozen reasons says an op has no
  rule ("channels of %x flow through aten.foo, which has no rule", a getitem of an op
  without a rule, index values that reach an op without a rule for them), or when an op
  without a rule touches one of its slots (a unit keeps only the first reason it was frozen
  for; SymInt arithmetic carries no channels and is not counted); other reasons (a
  model input or output, a fixed-shape constant, a reshape that cannot be factored, routed
  experts) are frozen by design and only counted;
- per model: trace seconds, groups, frozen groups, missing-rule groups, and every
  missing-rule reason grouped by op; `--baseline FILE` adds the missing-rule groups of an
  earlier run as a "before" column; `--compile` also prunes each model with
  `structured-50` (torch backend) and checks that it runs with the same output shapes and
  finite outputs (a check that a rule did not break the model, not a quality figure).

Run: `python benchmarks/census.py [--only bert gpt2] [--skip-torchvision] [--compile]
[--baseline benchmarks/results/census_before.json]` (writes benchmarks/results/census.{json,md})
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _isolation import machine, machine_line, write_results  # noqa: E402
from _zoo import first_line, load_zoo  # noqa: E402

from sparsec.frontends import trace  # noqa: E402
from sparsec.passes.analysis import DependencyGroups  # noqa: E402
from sparsec.pipeline import AnalysisManager  # noqa: E402

Build = Callable[[], tuple[nn.Module, Any]]
BATCH, SEQ, VOCAB = 2, 8, 100

# "which has no rule" closes every reason that blames a missing rule (dependency_groups,
# opinfo/layout's getitem); the op is what the reason names
_MISSING = re.compile(r"which has no rule")
_UNRULED_OP = re.compile(r"flow through (\S+), which has no rule")
_INDEX_OP = re.compile(r"reach %\S+ \((\S+)\), which has no rule for index values")
_GETITEM_OF = re.compile(r"getitem of %(\S+), which has no rule")


# ---------------------------------------------------------------- Hugging Face families
def _tokens(*, mask: bool = False, token_types: bool = False, positions: bool = False) -> dict[str, torch.Tensor]:
    """The zoo's token inputs (batch 2, sequence 8, vocabulary 100, seed 0)."""
    return load_zoo().token_inputs(mask=mask, token_types=token_types, positions=positions)()


def _image(size: int = 32) -> tuple[torch.Tensor]:
    return (torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0)),)


def _hf(
    model_cls: str, config_cls: str, inputs: Callable[[], Any], *, part: str = "", **config: Any
) -> Build:
    """`transformers.<model_cls>` from a tiny `<config_cls>`; `part` picks a submodule (encoder)."""

    def build() -> tuple[nn.Module, Any]:
        import transformers

        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
        if hasattr(model, "config"):
            model.config.use_cache = False
        if part:
            model = getattr(model, part)()
        return model.eval(), inputs()

    return build


ENCODER = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    attn_implementation="sdpa",
)  # fmt: skip
TEXT = dict(ENCODER, vocab_size=VOCAB, max_position_embeddings=32, num_labels=3)
DECODER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, use_cache=False,
    attn_implementation="sdpa",
)  # fmt: skip
BERTISH = lambda: _tokens(mask=True, token_types=True, positions=True)  # noqa: E731
CAUSAL = lambda: _tokens()  # noqa: E731
SEQ2SEQ = dict(
    d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
    decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=VOCAB,
    max_position_embeddings=32, use_cache=False, attn_implementation="sdpa",
)  # fmt: skip

HF_FAMILIES: dict[str, Build] = {
    "roberta": _hf("RobertaForSequenceClassification", "RobertaConfig",
                   lambda: _tokens(mask=True), **dict(TEXT, max_position_embeddings=40)),
    "albert": _hf("AlbertForSequenceClassification", "AlbertConfig", BERTISH,
                  embedding_size=32, **TEXT),
    "electra": _hf("ElectraForSequenceClassification", "ElectraConfig", BERTISH,
                   embedding_size=32, **TEXT),
    "deberta-v2": _hf("DebertaV2ForSequenceClassification", "DebertaV2Config",
                      lambda: _tokens(mask=True, token_types=True), relative_attention=True,
                      pos_att_type=["p2c", "c2p"], position_buckets=8,
                      **{k: v for k, v in TEXT.items() if k != "attn_implementation"}),
    "gpt-neo": _hf("GPTNeoForCausalLM", "GPTNeoConfig", CAUSAL, hidden_size=64, num_layers=2,
                   attention_types=[[["global", "local"], 1]], num_heads=4,
                   intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=32,
                   window_size=256, use_cache=False),
    "opt": _hf("OPTForCausalLM", "OPTConfig", CAUSAL, hidden_size=64, num_hidden_layers=2,
               ffn_dim=128, num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=32,
               word_embed_proj_dim=64, use_cache=False, attn_implementation="sdpa"),
    "bloom": _hf("BloomForCausalLM", "BloomConfig", CAUSAL, hidden_size=64, n_layer=2, n_head=4,
                 vocab_size=VOCAB, use_cache=False),
    "mistral": _hf("MistralForCausalLM", "MistralConfig", CAUSAL, head_dim=8, **DECODER),
    "qwen3": _hf("Qwen3ForCausalLM", "Qwen3Config", CAUSAL, head_dim=8, **DECODER),
    "gemma": _hf("GemmaForCausalLM", "GemmaConfig", CAUSAL, head_dim=8, **DECODER),
    "phi": _hf("PhiForCausalLM", "PhiConfig", CAUSAL, partial_rotary_factor=0.5,
               **{**DECODER, "num_key_value_heads": 8}),
    "phi3": _hf("Phi3ForCausalLM", "Phi3Config", CAUSAL, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, **DECODER),
    "mixtral": _hf("MixtralForCausalLM", "MixtralConfig", CAUSAL, head_dim=8,
                   num_local_experts=4, num_experts_per_tok=2, **DECODER),
    "qwen2-moe": _hf("Qwen2MoeForCausalLM", "Qwen2MoeConfig", CAUSAL, moe_intermediate_size=32,
                     shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                     decoder_sparse_step=1, **DECODER),
    "deit": _hf("DeiTForImageClassification", "DeiTConfig", _image, image_size=32, patch_size=8,
                num_labels=5, **ENCODER),
    "swin": _hf("SwinForImageClassification", "SwinConfig", _image, image_size=32, patch_size=4,
                embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=5),
    "hf-convnext": _hf("ConvNextForImageClassification", "ConvNextConfig", _image,
                       num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5),
    "hf-resnet": _hf("ResNetForImageClassification", "ResNetConfig", _image, embedding_size=16,
                     hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck",
                     num_labels=5),
    "bart-encoder": _hf("BartModel", "BartConfig", lambda: _tokens(mask=True),
                        part="get_encoder", **SEQ2SEQ),
    "whisper-encoder": _hf("WhisperModel", "WhisperConfig",
                           lambda: (torch.randn(BATCH, 16, 16),), part="get_encoder",
                           num_mel_bins=16, max_source_positions=8, max_target_positions=16,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                           **{k: v for k, v in SEQ2SEQ.items() if k != "max_position_embeddings"}),
    "gpt-j": _hf("GPTJForCausalLM", "GPTJConfig", CAUSAL, n_embd=64, n_layer=2, n_head=4,
                 rotary_dim=8, n_positions=32, vocab_size=VOCAB, use_cache=False),
    "falcon": _hf("FalconForCausalLM", "FalconConfig", CAUSAL, hidden_size=64,
                  num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
                  multi_query=True, use_cache=False, attn_implementation="sdpa"),
    "mpt": _hf("MptForCausalLM", "MptConfig", CAUSAL, d_model=64, n_heads=4, n_layers=2,
               expansion_ratio=2, max_seq_len=32, vocab_size=VOCAB, use_cache=False),
    "gpt-bigcode": _hf("GPTBigCodeForCausalLM", "GPTBigCodeConfig", CAUSAL, n_embd=64, n_layer=2,
                       n_head=4, n_positions=32, vocab_size=VOCAB, multi_query=True,
                       use_cache=False, attn_implementation="sdpa"),
    "starcoder2": _hf("Starcoder2ForCausalLM", "Starcoder2Config", CAUSAL, **DECODER),
    "gemma2": _hf("Gemma2ForCausalLM", "Gemma2Config", CAUSAL, head_dim=8, sliding_window=16,
                  **dict(DECODER, attn_implementation="eager")),
    "gemma3": _hf("Gemma3ForCausalLM", "Gemma3TextConfig", CAUSAL, head_dim=8,
                  sliding_window=16, **DECODER),
    "cohere": _hf("CohereForCausalLM", "CohereConfig", CAUSAL, **DECODER),
    "olmo": _hf("OlmoForCausalLM", "OlmoConfig", CAUSAL, **DECODER),
    "stablelm": _hf("StableLmForCausalLM", "StableLmConfig", CAUSAL, partial_rotary_factor=0.25,
                    **DECODER),
    "granite": _hf("GraniteForCausalLM", "GraniteConfig", CAUSAL, **DECODER),
    "olmoe": _hf("OlmoeForCausalLM", "OlmoeConfig", CAUSAL, num_experts=4,
                 num_experts_per_tok=2, **DECODER),
    "qwen3-moe": _hf("Qwen3MoeForCausalLM", "Qwen3MoeConfig", CAUSAL, head_dim=8, num_experts=4,
                     num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                     **DECODER),
    "xlm-roberta": _hf("XLMRobertaForSequenceClassification", "XLMRobertaConfig",
                       lambda: _tokens(mask=True), **dict(TEXT, max_position_embeddings=40)),
    "mobilebert": _hf("MobileBertForSequenceClassification", "MobileBertConfig", BERTISH,
                      embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32,
                      num_feedforward_networks=2, **TEXT),
    "convbert": _hf("ConvBertForSequenceClassification", "ConvBertConfig", BERTISH,
                    embedding_size=32, **dict(TEXT, attn_implementation="eager")),
    "squeezebert": _hf("SqueezeBertForSequenceClassification", "SqueezeBertConfig", BERTISH,
                       embedding_size=64, q_groups=2, k_groups=2, v_groups=2,
                       post_attention_groups=2, intermediate_groups=2, output_groups=2,
                       **{k: v for k, v in TEXT.items() if k != "attn_implementation"}),
    "modernbert": _hf("ModernBertForSequenceClassification", "ModernBertConfig",
                      lambda: _tokens(mask=True), global_attn_every_n_layers=1,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                      sep_token_id=2, **TEXT),
    "beit": _hf("BeitForImageClassification", "BeitConfig", _image, image_size=32, patch_size=8,
                use_relative_position_bias=True, num_labels=5, **ENCODER),
    "dinov2": _hf("Dinov2ForImageClassification", "Dinov2Config", _image, image_size=32,
                  patch_size=8, num_labels=5, **ENCODER),
    "clip-vision": _hf("CLIPVisionModel", "CLIPVisionConfig", _image, image_size=32,
                       patch_size=8, **ENCODER),
    "siglip-vision": _hf("SiglipVisionModel", "SiglipVisionConfig", _image, image_size=32,
                         patch_size=8, **ENCODER),
    "swinv2": _hf("Swinv2ForImageClassification", "Swinv2Config", _image, image_size=32,
                  patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4,
                  num_labels=5),
    "convnextv2": _hf("ConvNextV2ForImageClassification", "ConvNextV2Config", _image,
                      num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5),
    "regnet": _hf("RegNetForImageClassification", "RegNetConfig", _image, embedding_size=16,
                  hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=5),
    "poolformer": _hf("PoolFormerForImageClassification", "PoolFormerConfig", _image,
                      hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2,
                      patch_sizes=[7, 3], strides=[4, 2], padding=[2, 1], num_labels=5),
    "segformer": _hf("SegformerForImageClassification", "SegformerConfig", _image,
                     num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                     patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                     mlp_ratios=[2, 2], num_labels=5),
    "mobilenet-v2": _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", _image,
                        image_size=32, depth_multiplier=0.25, num_labels=5),
    "efficientnet": _hf("EfficientNetForImageClassification", "EfficientNetConfig", _image,
                        image_size=32, width_coefficient=0.25, depth_coefficient=0.25,
                        hidden_dim=320, num_labels=5),
    "wav2vec2": _hf("Wav2Vec2Model", "Wav2Vec2Config", lambda: (torch.randn(BATCH, 400),),
                    hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, conv_dim=(16, 16), conv_stride=(5, 2),
                    conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                    num_conv_pos_embedding_groups=4),
}  # fmt: skip


# ---------------------------------------------------------------- torchvision op patterns
class _MobileNetV3Head(nn.Module):
    """torchvision MobileNetV3/EfficientNet/MNASNet: in-place activations and
    `Dropout(inplace=True)` between the classifier's linears."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(16, 32), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.stem(x)), 1))


class _UnflattenAttention(nn.Module):
    """Heads split with `Tensor.unflatten`, as torch's own MHA and timm-style code do."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).flatten(-2))


class _SwinV2Attention(nn.Module):
    """torchvision's `shifted_window_attention` for Swin V2: the k part of the qkv bias
    zeroed in place, a window mask filled slice by slice, cosine attention (F.normalize)."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        bias[length : 2 * length].zero_()
        qkv = torch.nn.functional.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = x.new_zeros((n, n))
        mask[: n // 2, n // 2 :] = -100.0
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
        out = torch.softmax(q @ k.transpose(-2, -1) + mask, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _pattern(cls: type[nn.Module], inputs: Callable[[], Any]) -> Build:
    def build() -> tuple[nn.Module, Any]:
        torch.manual_seed(0)
        return cls().eval(), inputs()

    return build


# Models built here from op patterns that torchvision uses and the zoo lacks, so that the
# census sees them where torchvision cannot be installed.
PATTERNS: dict[str, Build] = {
    "mobilenetv3-classifier": _pattern(_MobileNetV3Head, _image),
    "unflatten-attention": _pattern(_UnflattenAttention, lambda: (torch.randn(BATCH, 6, 32),)),
    "swin-v2-attention": _pattern(_SwinV2Attention, lambda: (torch.randn(BATCH, 6, 16),)),
}


# ---------------------------------------------------------------- torchvision
def _torchvision() -> tuple[dict[str, Build], str]:
    """Every torchvision classification model, or {} and why not."""
    try:
        import torchvision
    except ImportError:
        return {}, "torchvision is not importable here: run from a benchmark environment with it"

    def build(name: str) -> Build:
        size = 224 if name.split("_")[0] in ("vit", "swin", "maxvit") else 128

        def make() -> tuple[nn.Module, Any]:
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None)
            return model.eval(), _image(size)

        return make

    names = torchvision.models.list_models(module=torchvision.models)
    return {f"tv-{n}": build(n) for n in names}, ""


# ---------------------------------------------------------------- the census
def _op_of(reason: str, targets: dict[str, str]) -> str:
    for pattern in (_UNRULED_OP, _INDEX_OP):
        if m := pattern.search(reason):
            return m.group(1) + (" (index values)" if pattern is _INDEX_OP else "")
    if m := _GETITEM_OF.search(reason):
        return f"getitem of {targets.get(m.group(1), m.group(1))}"
    return reason


def _unruled_on_tensors(graph: Any, unruled_ops: dict[str, list[str]]) -> dict[str, str]:
    """Node name -> the missing-rule reason, for every op without a rule that holds a tensor
    (SymInt arithmetic such as `operator.mul` on sizes carries no channels) and its inputs."""
    blamed: dict[str, str] = {}
    for op, names in unruled_ops.items():
        for name in names:
            node = graph.node(name)
            if not any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(node.meta.get("val"))):
                continue
            reason = f"channels of %{name} flow through {op}, which has no rule"
            for touched in (node, *node.all_input_nodes):
                blamed.setdefault(touched.name, reason)
    return blamed


def _trace(model: nn.Module, inputs: Any, *, dynamic: bool) -> Any:
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace(model, inputs, dynamic=dynamic)


def _leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def compile_check(build: Build) -> dict[str, Any]:
    """`--compile`: prune with `structured-50` (torch backend); the pruned module must run on
    the example inputs with the unpruned output shapes and finite outputs."""
    import sparsec

    model, inputs = build()

    def call(module: Any) -> list[torch.Tensor]:
        with torch.no_grad():
            return _leaves(module(**inputs) if isinstance(inputs, dict) else module(*inputs))

    expected = [t.shape for t in call(model)]
    before = sum(p.numel() for p in model.parameters())
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = sparsec.compile(model, inputs, pipeline="structured-50", backend="torch")
        out = call(compiled.module)
    except Exception as exc:
        return {"compile_ok": False, "compile_error": first_line(exc, 200)}
    shapes_ok = [t.shape for t in out] == expected
    finite = all(torch.isfinite(t).all() for t in out if t.is_floating_point())
    return {
        "compile_ok": shapes_ok and finite,
        "compile_error": "" if shapes_ok and finite else ("output shapes changed" if not shapes_ok else "non-finite outputs"),
        "params_before": before,
        "params_after": sum(p.numel() for p in compiled.module.parameters()),
    }


def census_row(name: str, source: str, build: Build) -> dict[str, Any]:
    """Trace, analyse, and count the missing-rule groups of one model."""
    row: dict[str, Any] = {"model": name, "source": source, "error": ""}
    try:
        model, inputs = build()
    except Exception as exc:  # a model that cannot be built is a row, not a crash
        row["error"] = "build: " + first_line(exc, 200)
        return row
    start = time.perf_counter()
    try:
        graph = _trace(model, inputs, dynamic=True)
        row["static"] = False
    except Exception as exc:
        try:  # the ops are what the census reads: static shapes do as well
            graph = _trace(model, inputs, dynamic=False)
            row["static"] = first_line(exc, 200)
        except Exception as exc_static:
            row["error"] = "trace: " + first_line(exc_static, 200)
            return row
    row["trace_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    deps = AnalysisManager(graph).get(DependencyGroups())
    row["analysis_s"] = round(time.perf_counter() - start, 2)
    targets = {n.name: str(n.target) for n in graph.nodes}
    unruled = _unruled_on_tensors(graph, deps.unruled_ops)
    frozen = [g for g in deps.groups if g.frozen_units]
    missing: dict[str, list[str]] = defaultdict(list)
    by_design: Counter[str] = Counter()
    missing_groups = 0
    for group in frozen:
        reasons = sorted(set(group.frozen_units.values()))
        # a unit keeps the first reason it was frozen for: also blame the ops without a rule
        # that touch one of the group's slots, whatever reason came first
        reasons += sorted({unruled[name] for name, _ in group.slots if name in unruled} - set(reasons))
        blamed = [r for r in reasons if _MISSING.search(r)]
        if blamed:
            missing_groups += 1
            for reason in blamed:
                missing[_op_of(reason, targets)].append(reason)
        else:
            by_design[re.sub(r"%\S+", "%x", reasons[0])] += 1
    row.update(
        groups=len(deps.groups),
        frozen_groups=len(frozen),
        missing_rule_groups=missing_groups,
        missing_by_op={op: sorted(set(rs)) for op, rs in sorted(missing.items())},
        unruled_ops={
            op: len(nodes)
            for op, nodes in sorted(deps.unruled_ops.items())
            if any(n in unruled for n in nodes)
        },
        frozen_by_design=dict(by_design.most_common()),
    )
    return row


def _models(skip_torchvision: bool) -> tuple[list[tuple[str, str, Build]], str]:
    zoo = load_zoo()
    models = [(e.name, "zoo", e.build) for e in zoo.ZOO.values()]
    models += [(name, "hf", build) for name, build in HF_FAMILIES.items()]
    models += [(name, "pattern", build) for name, build in PATTERNS.items()]
    if skip_torchvision:
        return models, "skipped by --skip-torchvision"
    tv, why = _torchvision()
    return models + [(name, "torchvision", build) for name, build in tv.items()], why


def _pruned_cell(r: dict[str, Any]) -> str:
    if "compile_ok" not in r:
        return "-"
    if not r["compile_ok"]:
        return f"no: {r['compile_error'][:100]}"
    return f"yes, {r['params_after'] / r['params_before']:.2f} of params"


def markdown(rows: list[dict[str, Any]], before: dict[str, int]) -> str:
    head = "| model | source | trace s | groups | frozen | missing-rule groups"
    head += " (before → now)" if before else ""
    pruned = any("compile_ok" in r for r in rows)
    head += " | ops without a rule (nodes) |" + (" structured-50 pruned, runs |" if pruned else "")
    lines = [head, "|---|---|---:|---:|---:|---:|---|" + ("---|" if pruned else "")]
    for r in rows:
        if r["error"]:
            lines.append(
                f"| {r['model']} | {r['source']} | - | - | - | - | skipped: {r['error'][:120]} |"
                + (" - |" if pruned else "")
            )
            continue
        missing = str(r["missing_rule_groups"])
        if before:
            missing = f"{before.get(r['model'], '-')} → {missing}"
        ops = ", ".join(f"{op} ({len(rs)})" for op, rs in r["missing_by_op"].items()) or "none"
        static = " (static shapes)" if r.get("static") else ""
        lines.append(
            f"| {r['model']}{static} | {r['source']} | {r['trace_s']:.1f} | {r['groups']} | "
            f"{r['frozen_groups']} | {missing} | {ops} |"
            + (f" {_pruned_cell(r)} |" if pruned else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    parser.add_argument("--skip-torchvision", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="also prune each model (structured-50) and run it"
    )
    parser.add_argument("--baseline", type=Path, help="an earlier census.json for a before column")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "census.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    before_machine = machine()
    print(machine_line(before_machine), flush=True)
    models, tv_skipped = _models(args.skip_torchvision)
    if tv_skipped:
        print(f"torchvision: skipped ({tv_skipped})", flush=True)
    rows = []
    for name, source, build in models:
        if args.only and name not in args.only:
            continue
        row = census_row(name, source, build)
        if args.compile and not row["error"]:
            row.update(compile_check(build))
        rows.append(row)
        if row["error"]:
            print(f"{name:32s} {row['error']}", flush=True)
        else:
            ops = ", ".join(row["missing_by_op"]) or "-"
            pruned = ""
            if "compile_ok" in row:
                pruned = (
                    f" pruned {row['params_before']} -> {row['params_after']} params, runs"
                    if row["compile_ok"]
                    else f" pruned: {row['compile_error']}"
                )
            print(
                f"{name:32s} trace {row['trace_s']:6.1f}s groups {row['groups']:4d} "
                f"frozen {row['frozen_groups']:3d} missing-rule {row['missing_rule_groups']:3d} {ops}{pruned}",
                flush=True,
            )
    before: dict[str, int] = {}
    if args.baseline:
        old = json.loads(args.baseline.read_text())["rows"]
        before = {r["model"]: r["missing_rule_groups"] for r in old if not r["error"]}
    table = markdown(rows, before)
    print(table)
    ran = [r for r in rows if not r["error"]]
    summary = {
        "models": len(rows),
        "analysed": len(ran),
        "skipped": len(rows) - len(ran),
        "missing_rule_groups": sum(r["missing_rule_groups"] for r in ran),
        "ops_still_missing": sorted({op for r in ran for op in r["missing_by_op"]}),
        "torchvision": tv_skipped or "ran",
    }
    if args.compile:
        summary["pruned_and_ran"] = sum(bool(r.get("compile_ok")) for r in ran)
        summary["prune_failures"] = {r["model"]: r["compile_error"] for r in ran if not r.get("compile_ok")}
    print(json.dumps(summary))
    write_results(args.out, before_machine, machine(), summary=summary, rows=rows)
    args.out.with_suffix(".md").write_text(
        f"{machine_line(before_machine)}\n\n{json.dumps(summary)}\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
