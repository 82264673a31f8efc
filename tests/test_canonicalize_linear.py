"""canonicalize-linear: GPT-2 Conv1D-style addmm/mm become linear, outputs unchanged."""

from __future__ import annotations

import torch
from torch import nn

from sparsec.frontends import trace
from sparsec.passes.rewrite import CanonicalizeLinear, Sparsify
from sparsec.pipeline import PassManager, VerifyEach

aten = torch.ops.aten


class Conv1DStyle(nn.Module):
    """Like transformers' Conv1D: weight stored [in, out], applied with addmm."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 16))
        self.b1 = nn.Parameter(torch.randn(16))
        self.w2 = nn.Parameter(torch.randn(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.addmm(self.b1, x.view(-1, 8), self.w1).relu()
        return torch.mm(h, self.w2)


class SharedWeight(nn.Module):
    """The weight is also read elementwise: it must stay as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, self.w) + self.w.sum()


def _targets(graph) -> list:  # type: ignore[no-untyped-def]
    return [n.target for n in graph.nodes if n.op == "call_function"]


def test_addmm_and_mm_become_linear_with_equal_outputs() -> None:
    torch.manual_seed(0)
    model, x = Conv1DStyle().eval(), torch.randn(3, 8)
    graph = trace(model, (x,))
    expected = model(x)
    run = PassManager([CanonicalizeLinear()], instruments=[VerifyEach()]).run(graph)
    assert run.changed
    assert aten.addmm.default not in _targets(graph) and aten.mm.default not in _targets(graph)
    assert _targets(graph).count(aten.linear.default) == 2
    assert graph.tensor("w1").shape == (16, 8)
    torch.testing.assert_close(graph.module(x), expected)
    torch.testing.assert_close(graph.module(torch.randn(5, 8)).shape, torch.Size([5, 4]))
    assert model.w1.shape == (8, 16), "the user's model is untouched"


def test_weight_read_elsewhere_is_left_alone() -> None:
    model, x = SharedWeight().eval(), torch.randn(3, 8)
    graph = trace(model, (x,))
    run = PassManager([CanonicalizeLinear()]).run(graph)
    assert not run.changed
    assert aten.mm.default in _targets(graph)


def test_gpt2_gets_sparsified_after_canonicalization() -> None:
    transformers = __import__("pytest").importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16, use_cache=False
    )
    model = transformers.GPT2Model(config).eval()
    ids = torch.randint(0, 50, (2, 8))
    graph = trace(model, {"input_ids": ids})
    expected = model(input_ids=ids).last_hidden_state
    PassManager([CanonicalizeLinear()], instruments=[VerifyEach()]).run(graph)
    torch.testing.assert_close(
        graph.module(input_ids=ids).last_hidden_state, expected, atol=1e-5, rtol=1e-5
    )
    run = PassManager([Sparsify(sparsity=0.5)]).run(graph)
    assert run.changed


# ---------------------------------------------------------------- Before / Expected IR
def test_conv1d_style_ir() -> None:
    """addmm(b, x, W) becomes linear(x, Wᵀ, b) and mm(x, W) linear(x, Wᵀ); nodes keep names."""
    torch.manual_seed(0)
    model, x = Conv1DStyle().eval(), torch.randn(3, 8)
    graph = trace(model, (x,))
    before = """\
@w1: f32[8, 16]
@b1: f32[16]
@w2: f32[16, 4]
%x: f32[batch, 8] = input
%view: f32[batch, 8] = view(%x, [-1, 8])
%addmm: f32[batch, 16] = addmm(@b1, %view, @w1)
%relu: f32[batch, 16] = relu(%addmm)
%mm: f32[batch, 4] = mm(%relu, @w2)
return [%mm]
"""
    expected = """\
@w1: f32[16, 8]
@b1: f32[16]
@w2: f32[4, 16]
%x: f32[batch, 8] = input
%view: f32[batch, 8] = view(%x, [-1, 8])
%addmm: f32[batch, 16] = linear(%view, @w1, @b1)
%relu: f32[batch, 16] = relu(%addmm)
%mm: f32[batch, 4] = linear(%relu, @w2)
return [%mm]
"""
    assert str(graph) == before
    run = PassManager([CanonicalizeLinear()], instruments=[VerifyEach()]).run(graph)
    assert str(graph) == expected
    assert run.changed and graph.version == 1
    assert torch.equal(graph.tensor("w1"), model.w1.t())
    assert torch.equal(graph.tensor("w2"), model.w2.t())
    assert torch.equal(graph.tensor("b1"), model.b1)
    for batch in (3, 5):
        inputs = torch.randn(batch, 8)
        with torch.no_grad():
            torch.testing.assert_close(graph(inputs), model(inputs))
