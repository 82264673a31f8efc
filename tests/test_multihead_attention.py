"""torch's nn.MultiheadAttention: traced head by head, pruned by whole heads, put back.

Rules:
- `sparsec.nn.head_attention` equals `nn.MultiheadAttention.forward` (allclose): batch first
  or not, self- and cross-attention, kdim/vdim, bool and float masks, the causal hint, returned
  (averaged or per-head) weights, unbatched input, and dropout in training (same seed);
- tracing substitutes it (same parameters, exact for zero pruning) and restores the modules
  and torch's fast-path flag; modules it cannot express are left as torch runs them (heads
  frozen), named in the notes;
- the dependency analysis finds one unit per head; `structured-50` removes heads, and
  `compiled.module` holds `PrunedMultiheadAttention` (fewer heads, same head and model width),
  which matches the graph, trains, and round-trips its state_dict.
The zoo (tests/zoo.py: torchvision-vit, transformer-encoder, transformer-encoder-seq-first)
covers the ONNX Runtime backend against torch (test_zoo.py).

Example:
    pytest -q tests/test_multihead_attention.py
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn
from zoo import ZOO, EncoderBlock, VisionTransformer

import sparsec
from sparsec.frontends import trace
from sparsec.nn import PrunedMultiheadAttention, head_attention
from sparsec.passes.analysis import DependencyGroups
from sparsec.pipeline import AnalysisManager

E, H, B, L, S = 32, 4, 3, 5, 6


def _masks(source: int, causal: bool) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    padding = torch.rand(B, source, generator=g) > 0.6
    padding[:, 0] = False
    blocked = torch.rand(L, source, generator=g) > 0.7
    blocked[:, 0] = False
    cases: list[dict[str, Any]] = [
        {},
        {"key_padding_mask": padding},
        {"attn_mask": blocked},
        {"attn_mask": torch.randn(L, source, generator=g)},
        {"key_padding_mask": padding, "attn_mask": blocked},
        {"key_padding_mask": padding.float() * -2.0, "attn_mask": torch.randn(L, source, generator=g)},
        {"attn_mask": torch.randn(B * H, L, source, generator=g)},
    ]
    if causal:
        mask = nn.Transformer.generate_square_subsequent_mask(L)
        cases += [{"attn_mask": mask, "is_causal": True},
                  {"attn_mask": mask, "is_causal": True, "key_padding_mask": padding}]
    return cases


def _close(actual: Any, expected: Any) -> None:
    assert (actual is None) == (expected is None)
    if expected is not None:
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-5 * max(1.0, float(expected.abs().max())), rtol=1e-5)


@pytest.mark.parametrize(
    ("batch_first", "inputs"),
    list(itertools.product([True, False], ["self", "cross", "kdim-vdim"])),
)
def test_head_attention_equals_torch(batch_first: bool, inputs: str) -> None:
    torch.manual_seed(0)
    kdim, vdim = (24, 40) if inputs == "kdim-vdim" else (None, None)
    module = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=vdim).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()

    def sequence(n: int, width: int) -> torch.Tensor:
        return torch.randn(B, n, width) if batch_first else torch.randn(n, B, width)

    x = sequence(L, E)
    if inputs == "self":
        q = k = v = x
    elif inputs == "cross":
        q, k = x, sequence(S, E)
        v = k
    else:
        q, k, v = x, sequence(S, 24), sequence(S, 40)
    with torch.no_grad():
        for masks, need_weights, average in itertools.product(
            _masks(k.shape[1 if batch_first else 0], causal=inputs == "self"), [False, True], [True, False]
        ):
            expected = module(q, k, v, need_weights=need_weights, average_attn_weights=average, **masks)
            actual = head_attention(module, q, k, v, need_weights=need_weights, average_attn_weights=average, **masks)
            _close(actual[0], expected[0])
            _close(actual[1], expected[1])


def test_head_attention_unbatched_and_dropout_match_torch() -> None:
    module = nn.MultiheadAttention(E, H, dropout=0.3).eval()
    x = torch.randn(L, E)
    padding = torch.tensor([False, False, False, True, True])
    for need_weights in (False, True):
        expected = module(x, x, x, key_padding_mask=padding, need_weights=need_weights)
        actual = head_attention(module, x, x, x, key_padding_mask=padding, need_weights=need_weights)
        _close(actual[0], expected[0])
        _close(actual[1], expected[1])
    module.train()  # torch draws dropout from the same stream in the same order
    x = torch.randn(L, B, E)
    for need_weights in (False, True):
        torch.manual_seed(1)
        expected = module(x, x, x, need_weights=need_weights)
        torch.manual_seed(1)
        actual = head_attention(module, x, x, x, need_weights=need_weights)
        _close(actual[0], expected[0])
        _close(actual[1], expected[1])


@pytest.mark.parametrize("name", ["torchvision-vit", "transformer-encoder-seq-first"])
def test_trace_is_exact_restores_and_finds_one_unit_per_head(name: str) -> None:
    model, inputs = ZOO[name].build()
    attention = {n: m for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    graph = trace(model, inputs)
    with torch.no_grad():
        _close(graph.module(*inputs), model(*inputs))
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert "aten.scaled_dot_product_attention.default" in ops
    assert not {"aten._native_multi_head_attention.default", "aten._transformer_encoder_layer_fwd.default"} & ops
    assert any(f"traced {len(attention)} nn.MultiheadAttention" in note for note in graph.notes)
    assert all("forward" not in vars(m) for m in attention.values())
    assert torch.backends.mha.get_fastpath_enabled()

    deps = AnalysisManager(graph).get(DependencyGroups())
    assert deps.unruled_ops == {}
    for layer in attention:
        (group,) = [g for g in deps.groups if layer in g.layers]
        assert len(group.units) == H and not group.frozen_units, group.describe()


KEEP_WIDTH = "magnitude-importance{norm=2},prune-channels{ratio=0.5,ignore=[embed]}"


def _compiled(name: str, pipeline: str = "structured-50") -> tuple[Any, nn.Module, Any]:
    model, inputs = ZOO[name].build()
    return sparsec.compile(model, inputs, backend="torch", pipeline=pipeline), model, inputs


def _attention(module: nn.Module) -> list[nn.MultiheadAttention]:
    """The attention modules, each of the class its widths call for."""
    found = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]
    assert found
    for m in found:
        fits = m.num_heads * m.head_dim == m.embed_dim
        assert type(m) is (nn.MultiheadAttention if fits else PrunedMultiheadAttention)
    return found


def _trains(module: nn.Module, inputs: Any) -> None:
    module.train()
    module(*inputs).sum().backward()
    assert all(m.in_proj_weight.grad is not None for m in _attention(module))
    module.eval()


def test_vision_transformer_loses_heads_and_stays_a_vision_transformer() -> None:
    """structured-50 halves heads and the residual width alike: torch's class still fits."""
    compiled, model, inputs = _compiled("torchvision-vit")
    pruned = compiled.module
    assert type(pruned) is VisionTransformer and pruned.hidden_dim == E // 2
    for attention in _attention(pruned):
        assert (attention.num_heads, attention.head_dim, attention.embed_dim) == (2, 8, 16)
        assert attention.in_proj_weight.shape == (3 * 16, 16)
    assert all(b.num_heads == 2 for b in pruned.modules() if isinstance(b, EncoderBlock))
    with torch.no_grad():
        _close(pruned(*inputs), compiled.graph.module(*inputs))
        assert pruned(*inputs).shape == model(*inputs).shape
    _trains(pruned, inputs)


def test_transformer_encoder_runs_pruned_heads_without_fast_paths() -> None:
    """Heads halved, model width kept: PrunedMultiheadAttention, and in eval mode without
    gradients (where torch would take its fused and nested-tensor kernels) it still equals
    the graph. (Sequence-first layers: the zoo test prunes them.)"""
    compiled, model, inputs = _compiled("transformer-encoder", KEEP_WIDTH)
    pruned = compiled.module
    attention = _attention(pruned)
    assert [(m.num_heads, m.head_dim, m.embed_dim) for m in attention] == [(2, 8, E)] * 2
    assert all(type(m) is PrunedMultiheadAttention for m in attention)
    assert attention[0].in_proj_weight.shape == (3 * 16, E) and attention[0].out_proj.weight.shape == (E, 16)
    assert not pruned.encoder.use_nested_tensor
    with torch.no_grad():
        _close(pruned(*inputs), compiled.graph.module(*inputs))
        assert pruned(*inputs).shape == model(*inputs).shape
    _trains(pruned, inputs)


def test_cross_attention_heads_prune() -> None:
    class Seq2Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(16, E)
            self.transformer = nn.Transformer(E, H, 1, 1, 64, batch_first=True)

        def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            mask = nn.Transformer.generate_square_subsequent_mask(target.shape[1])
            return self.transformer(self.embed(source), self.embed(target), tgt_mask=mask, tgt_is_causal=True)

    torch.manual_seed(0)
    inputs = (torch.randn(2, S, 16), torch.randn(2, L, 16))
    compiled = sparsec.compile(Seq2Seq().eval(), inputs, backend="torch", pipeline="structured-50")
    groups = {g["layers"]: g for g in compiled.report.groups}
    cross = groups["transformer.decoder.layers.0.multihead_attn"]
    assert (cross["before"], cross["after"], cross["frozen"]) == (H, 2, "")
    assert len(_attention(compiled.module)) == 3
    with torch.no_grad():
        _close(compiled.module(*inputs), compiled.graph.module(*inputs))


def test_returned_weights_follow_the_kept_heads() -> None:
    class Weights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.attention = nn.Linear(16, E), nn.MultiheadAttention(E, H, batch_first=True)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.embed(x)
            out, weights = self.attention(h, h, h)  # need_weights=True, averaged
            return out.sum(-1), weights

    torch.manual_seed(0)
    x = torch.randn(2, L, 16)
    compiled = sparsec.compile(Weights().eval(), (x,), backend="torch", pipeline="structured-50")
    assert compiled.module.attention.num_heads == 2
    with torch.no_grad():
        out, weights = compiled.module(x)
        expected = compiled.graph.module(x)
    _close(out, expected[0])
    _close(weights, expected[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, L))


def test_unsupported_attention_is_left_whole_and_named() -> None:
    class BiasKV(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(16, E)
            self.attention = nn.MultiheadAttention(E, H, add_bias_kv=True, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.embed(x)
            return self.attention(h, h, h, need_weights=False)[0]

    torch.manual_seed(0)
    model = BiasKV().eval()
    graph = trace(model, (torch.randn(2, L, 16),))
    assert "forward" not in vars(model.attention)
    assert any("attention (add_bias_kv=True" in note for note in graph.notes)
    deps = AnalysisManager(graph).get(DependencyGroups())
    (group,) = deps.group_of("attention")
    assert len(group.frozen_units) == len(group.units)
    # torch's path packs q/k/v as unflatten(-1, (3, E)) and picks each by index: kept whole
    assert "selects one index" in next(iter(group.frozen_units.values()))


def test_pruned_attention_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    trained = PrunedMultiheadAttention(E, 2, 8, dropout=0.1, batch_first=True)
    assert trained.in_proj_weight.shape == (48, E) and trained.out_proj.weight.shape == (E, 16)
    fresh = PrunedMultiheadAttention(E, 2, 8, dropout=0.1, batch_first=True)
    fresh.load_state_dict(trained.state_dict())
    assert list(fresh.state_dict()) == list(nn.MultiheadAttention(E, H).state_dict())
    x = torch.randn(B, L, E)
    _close(fresh.eval()(x, x, x)[0], trained.eval()(x, x, x)[0])
    separate = PrunedMultiheadAttention(E, 2, 8, kdim=24, vdim=40)
    assert separate.k_proj_weight.shape == (16, 24) and separate.in_proj_weight is None
    out, weights = separate(torch.randn(L, B, E), torch.randn(S, B, 24), torch.randn(S, B, 40))
    assert out.shape == (L, B, E) and weights.shape == (B, L, S)
