"""Updaters for Hugging Face attention, MLP and mixture-of-experts blocks, and their widths.

Rules:
- sparsec prunes whole heads (a kv head with its query group under GQA), so the per-head
  width stays; head counts and the widths derived from them follow the projections;
- `prune-experts` removes whole experts: an experts module's and a router's `num_experts`
  follow axis 0 of their tensors (their `hidden_dim`, the last axis, follows width pruning), and a causal-LM head's `num_experts` (read by the
  load-balancing loss) follows them where every layer keeps the same number;
- one `AttentionSpec` per code family (the classes transformers copies between models share
  one); an attribute is set only where the module has it;
- `block_widths` reads the same specs, so a saved config and the updaters never disagree.

Example:
    block_widths(model.model.layers[0].self_attn)
    # {'hidden_size': 64, 'num_attention_heads': 4, 'num_key_value_heads': 1, 'head_dim': 8}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from sparsec.materialize.registry import GraphFacts, register_updater

__all__ = ["block_widths"]


def _out_width(layer: Any) -> int:
    """Output width of a Linear or Hugging Face Conv1D (weight `[in, out]`)."""
    weight = layer.weight
    return int(weight.shape[1] if type(layer).__name__ == "Conv1D" else weight.shape[0])


def _in_width(layer: Any) -> int:
    weight = layer.weight
    return int(weight.shape[0] if type(layer).__name__ == "Conv1D" else weight.shape[1])


@dataclass(frozen=True)
class AttentionSpec:
    """Where one attention family keeps its projections and the attributes its forward reads."""

    query: str  # the child that projects queries (or queries, keys and values, fused)
    head_dim: str  # the attribute holding the per-head width
    heads: tuple[str, ...]  # attributes holding the query head count
    key: str | None = None  # the child that projects keys, under GQA
    kv_heads: tuple[str, ...] = ()
    groups: str | None = None  # attribute holding queries per kv head
    query_width: tuple[str, ...] = ()  # attributes holding heads * head_dim
    hidden: tuple[str, ...] = ()  # attributes holding the model width
    fused: int = 1  # outputs the query child concatenates (q, k, v: 3)


_ROPE = AttentionSpec(
    query="q_proj", key="k_proj", head_dim="head_dim", heads=("num_heads", "num_attention_heads"),
    kv_heads=("num_key_value_heads",), groups="num_key_value_groups",
)
_BERT = AttentionSpec(
    query="query", head_dim="attention_head_size", heads=("num_attention_heads",),
    query_width=("all_head_size",),
)
_SPECS: dict[str, AttentionSpec] = {
    **dict.fromkeys(
        ("LlamaAttention", "Qwen2Attention", "Qwen3Attention", "MistralAttention", "GemmaAttention",
         "Gemma2Attention", "OlmoAttention", "Olmo2Attention", "GraniteAttention", "ViTAttention",
         "DeiTAttention", "Qwen2MoeAttention", "MixtralAttention", "Qwen3MoeAttention",
         "PhiAttention", "OPTAttention", "BartAttention", "MBartAttention",
         "WhisperAttention", "StableLmAttention", "CohereAttention"),
        _ROPE,
    ),
    **dict.fromkeys(
        ("BertSelfAttention", "RobertaSelfAttention", "ElectraSelfAttention",
         "XLMRobertaSelfAttention", "CamembertSelfAttention"),
        _BERT,
    ),
    "DistilBertSelfAttention": AttentionSpec(
        query="q_lin", head_dim="attention_head_size", heads=("n_heads",), query_width=("dim",),
    ),
    "GPT2Attention": AttentionSpec(
        query="c_attn", head_dim="head_dim", heads=("num_heads",),
        query_width=("split_size", "embed_dim"), fused=3,
    ),
    "GPTNeoXAttention": AttentionSpec(
        query="query_key_value", head_dim="head_size", heads=("num_attention_heads",), fused=3,
    ),
    "T5Attention": AttentionSpec(
        query="q", head_dim="key_value_proj_dim", heads=("n_heads",), query_width=("inner_dim",),
        hidden=("d_model",),
    ),
}

# MLP blocks (or layers holding the MLP's linears): the child whose output width is the
# intermediate size
_MLPS: dict[str, str] = {
    **dict.fromkeys(
        ("LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP", "GemmaMLP", "OlmoMLP", "GraniteMLP"),
        "gate_proj",
    ),
    **dict.fromkeys(("BertIntermediate", "RobertaIntermediate", "ElectraIntermediate"), "dense"),
    "GPT2MLP": "c_fc",
    "GPTNeoXMLP": "dense_h_to_4h",
    **dict.fromkeys(
        ("PhiMLP", "CLIPMLP", "OPTDecoderLayer", "BartEncoderLayer", "BartDecoderLayer",
         "WhisperEncoderLayer", "WhisperDecoderLayer"),
        "fc1",
    ),
    "FFN": "lin1",
    "T5DenseActDense": "wi",
    "T5DenseGatedActDense": "wi_0",
    "ViTMLP": "fc1",
}


# Mixture-of-experts modules: the tensor whose axis 0 counts the experts
_EXPERTS: dict[str, str] = {
    **dict.fromkeys(("MixtralExperts", "Qwen2MoeExperts", "Qwen3MoeExperts"), "gate_up_proj"),
    **dict.fromkeys(("MixtralTopKRouter", "Qwen2MoeTopKRouter", "Qwen3MoeTopKRouter"), "weight"),
}
_MOE_MODELS = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


def _set_present(module: nn.Module, names: tuple[str, ...], value: int) -> None:
    for name in names:
        if hasattr(module, name):
            setattr(module, name, value)


def _family(module: nn.Module, table: dict[str, Any]) -> Any:
    """The entry of the nearest class in the module's MRO that `table` names."""
    return next((table[c.__name__] for c in type(module).__mro__ if c.__name__ in table), None)


def block_widths(module: nn.Module) -> dict[str, int] | None:
    """The widths of one attention or MLP block, under config field names; None otherwise."""
    spec: AttentionSpec | None = _family(module, _SPECS)
    if spec is not None:
        query = getattr(module, spec.query)
        head_dim = int(getattr(module, spec.head_dim))
        heads = _out_width(query) // spec.fused // head_dim
        kv = _out_width(getattr(module, spec.key)) // head_dim if spec.key else heads
        return {
            "hidden_size": _in_width(query), "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim,
        }
    experts: str | None = _family(module, _EXPERTS)
    if experts is not None:
        widths = {"num_experts": int(getattr(module, experts).shape[0])}
        if hasattr(module, "down_proj"):  # experts, not the router
            widths["expert_intermediate_size"] = int(module.down_proj.shape[-1])
        return widths
    mlp: str | None = _family(module, _MLPS)
    if mlp is not None:
        first = getattr(module, mlp)
        return {"hidden_size": _in_width(first), "intermediate_size": _out_width(first)}
    return None


def _update_attention(module: Any, facts: GraphFacts) -> None:
    spec: AttentionSpec = _family(module, _SPECS)
    widths = block_widths(module)
    assert widths is not None  # registered for _SPECS classes only
    heads, kv = widths["num_attention_heads"], widths["num_key_value_heads"]
    _set_present(module, spec.heads, heads)
    _set_present(module, spec.kv_heads, kv)
    _set_present(module, spec.query_width, heads * widths["head_dim"])
    _set_present(module, spec.hidden, widths["hidden_size"])
    if spec.groups is not None and hasattr(module, spec.groups):
        setattr(module, spec.groups, heads // kv)


def _update_mlp(module: Any, facts: GraphFacts) -> None:
    widths = block_widths(module)
    assert widths is not None  # registered for _MLPS classes only
    _set_present(module, ("hidden_size",), widths["hidden_size"])
    _set_present(module, ("intermediate_size",), widths["intermediate_size"])


@register_updater(("transformers", "Conv1D"))
def _conv1d(module: Any, facts: GraphFacts) -> None:
    module.nx, module.nf = (int(s) for s in module.weight.shape)


register_updater(*(("transformers", name) for name in _SPECS))(_update_attention)
register_updater(*(("transformers", name) for name in _MLPS))(_update_mlp)


@register_updater(*(("transformers", name) for name in _EXPERTS))
def _update_experts(module: Any, facts: GraphFacts) -> None:
    widths = block_widths(module)
    assert widths is not None  # registered for _EXPERTS classes only
    module.num_experts = widths["num_experts"]
    tensor = getattr(module, _family(module, _EXPERTS))
    _set_present(module, ("hidden_dim",), int(tensor.shape[-1]))  # width pruning of the model
    if hasattr(module, "down_proj"):
        _set_present(module, ("intermediate_dim",), int(module.down_proj.shape[-1]))


@register_updater(*(("transformers", name) for name in _MOE_MODELS))
def _update_moe_model(module: Any, facts: GraphFacts) -> None:
    counts = {
        widths["num_experts"]
        for sub in module.modules()
        if (widths := block_widths(sub)) is not None and "num_experts" in widths
    }
    if len(counts) == 1:
        module.num_experts = counts.pop()
