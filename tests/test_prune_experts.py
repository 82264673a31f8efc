"""`prune-experts`: whole experts of mixture-of-experts layers, by router statistics.

A plain-torch MoE (models.TinyMoE) gives the Before/Expected IR and the exact routing
property; Hugging Face Mixtral, Qwen2-MoE and Qwen3-MoE from tiny configs are traced (with
the batched_mm experts switch noted), pruned by 25% and 50%, uniformly and per layer, run
as the user's module in train and eval mode, export to ONNX Runtime and round-trip through
save_pretrained (ONNX Runtime on Mixtral only: each export costs seconds). Refusals: every expert, fewer than top_k, routing that cannot be followed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from models import TinyMoE, make_hf_moe
from torch import nn
from zoo import hf_available

import sparsec
from sparsec.calibration import Calibration
from sparsec.errors import PassError
from sparsec.frontends import trace
from sparsec.passes.analysis import DependencyGroups
from sparsec.passes.rewrite import PruneExperts
from sparsec.pipeline import AnalysisManager, PassManager, VerifyEach

needs_moe = pytest.mark.skipif(
    not hf_available("MixtralForCausalLM"), reason="transformers has no MoE models"
)


def _tokens(n: int = 16) -> list[tuple[torch.Tensor]]:
    return [(torch.randn(n, 8, generator=torch.Generator().manual_seed(i)),) for i in range(2)]


def _summary(compiled: sparsec.Compiled) -> dict:
    return next(s for name, s in compiled.report.pass_summaries if name.startswith("prune-experts"))


def _logits(output: object) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]  # type: ignore[index,attr-defined,no-any-return]


# ---------------------------------------------------------------- plain torch MoE
def test_tiny_moe_ir_and_the_kept_tokens_are_unchanged() -> None:
    """The router row and index 0 of both expert tensors go; tokens whose two experts are
    kept produce exactly what they did (renormalised top-k); the others do not."""
    model = TinyMoE().eval()
    graph = trace(model, (torch.randn(5, 8),))
    before = str(graph)
    am = AnalysisManager(graph, Calibration(_tokens()))
    run = PassManager([PruneExperts(count=1)], instruments=[VerifyEach()]).run(graph, am)
    ((_, result),) = run.results
    assert result is not None and result.changed and graph.version == 1
    assert result.summary.layers[0]["removed"] == [0]  # the least gate mass (see summary scores)
    expected = (
        before.replace("@up: f32[4, 6, 8]", "@up: f32[3, 6, 8]")
        .replace("@down: f32[4, 8, 6]", "@down: f32[3, 8, 6]")
        .replace("@gate.weight: f32[4, 8]", "@gate.weight: f32[3, 8]")
        .replace("%linear: f32[batch, 4]", "%linear: f32[batch, 3]")
        .replace("%softmax: f32[batch, 4]", "%softmax: f32[batch, 3]")
    )
    assert str(graph) == expected and expected != before
    assert "topk(%softmax, 2)" in expected  # top_k stays; the softmax runs over 3 logits
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        kept = ~(model.gate(x).topk(2, -1).indices == 0).any(-1)
        old, new = model(x), graph(x)
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(new[kept], old[kept], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(new[~kept], old[~kept], atol=1e-3)


class OneHotMoE(nn.Module):
    """Experts combined through one_hot(indices, 4): the expert count is a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(8, 4, bias=False)
        self.experts = nn.Parameter(torch.randn(4, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, ids = torch.softmax(self.gate(x), -1).topk(2, -1)
        combine = (F.one_hot(ids, 4).to(x.dtype) * top.unsqueeze(-1)).sum(1)
        return (torch.einsum("nh,eoh->neo", x, self.experts) * combine.unsqueeze(-1)).sum(1)


def test_a_router_the_analysis_cannot_follow_is_frozen_with_the_reason() -> None:
    graph = trace(OneHotMoE().eval(), (torch.randn(5, 8),))
    (group,) = [g for g in AnalysisManager(graph).get(DependencyGroups()).groups if g.routing]
    assert group.routing is not None and "reach %one_hot" in group.routing.reason
    with pytest.raises(PassError, match=r"experts of gate cannot be removed: the indices chosen by %topk reach %one_hot.*Fix: dispatch"):
        sparsec.compile(
            OneHotMoE().eval(), (torch.randn(5, 8),), pipeline="prune-experts{ratio=0.5}",
            backend="torch", calibration=_tokens(),
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("ratio=1.0", "would remove every expert of gate \\(4\\).*Fix: remove at most 2"),
        ("count=3", "would leave gate 1 experts, fewer than the 2 its router chooses.*ratio <= 0.5"),
    ],
)
def test_too_few_experts_are_refused(options: str, message: str) -> None:
    with pytest.raises(PassError, match=message):
        sparsec.compile(
            TinyMoE().eval(), (torch.randn(5, 8),), pipeline=f"prune-experts{{{options}}}",
            backend="torch", calibration=_tokens(),
        )


def test_a_model_without_experts_is_refused() -> None:
    with pytest.raises(PassError, match="no mixture-of-experts layer"):
        sparsec.compile(
            nn.Sequential(nn.Linear(8, 8)).eval(), (torch.randn(5, 8),), pipeline="prune-experts",
            backend="torch", calibration=_tokens(),
        )


def test_channel_pruning_leaves_the_experts_alone() -> None:
    graph = trace(TinyMoE().eval(), (torch.randn(5, 8),))
    (group,) = [g for g in AnalysisManager(graph).get(DependencyGroups()).groups if g.routing]
    assert len(group.prunable_units) == 0
    assert "prune-experts removes whole experts" in next(iter(group.frozen_units.values()))
    assert {(p.target, p.axis) for p in group.params} == {("gate.weight", 0), ("up", 0), ("down", 0)}


# ---------------------------------------------------------------- Hugging Face MoE models
@needs_moe
@pytest.mark.parametrize(
    ("family", "layers", "pipeline", "after", "hidden", "backend"),
    [
        ("mixtral", 1, "prune-experts{ratio=0.25}", [6], 32, "onnxruntime"),
        ("qwen2-moe", 2, "prune-experts{layers=[[model.layers.0.*, 2], [model.layers.1.*, 4]]}", [6, 4], 32, "torch"),
        ("mixtral", 1, "prune-experts{ratio=0.5,criterion=frequency}", [4], 32, "torch"),
        ("qwen3-moe", 1, "prune-channels{ratio=0.5},prune-experts{count=2}", [6], 16, "torch"),
    ],
    ids=["mixtral-25-ort", "qwen2-per-layer", "mixtral-50", "qwen3-25-and-width"],
)
def test_hf_moe_loses_experts_runs_exports_and_saves(
    tmp_path: Path, family: str, layers: int, pipeline: str, after: list[int], hidden: int,
    backend: str,
) -> None:
    model, inputs = make_hf_moe(family, num_hidden_layers=layers)
    calibration = [inputs, {"input_ids": (inputs["input_ids"] * 7) % 100}]
    compiled = sparsec.compile(model, inputs, pipeline=pipeline, backend=backend, calibration=calibration)
    assert compiled.report.backend == backend, compiled.report.backend_reason
    assert any("experts implementation 'batched_mm'" in note for note in compiled.report.notes)
    assert model.config._experts_implementation == "grouped_mm"  # restored after tracing
    rows = _summary(compiled)["layers"]
    assert [row["layer"] for row in rows] == [f"model.layers.{i}.mlp" for i in range(layers)]
    assert [row["after"] for row in rows] == after
    assert all(len(row["kept"]) == n >= row["top_k"] == 2 for row, n in zip(rows, after, strict=True))
    with torch.no_grad():
        expected = _logits(model(**inputs))
        graph_out = _logits(compiled.graph.module(**inputs))
        actual = _logits(compiled(**inputs))
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, graph_out, rtol=1e-4, atol=1e-4)  # the backend (ONNX) matches torch
    module = compiled.module  # the user's class, fewer experts, in both modes
    assert type(module) is type(model)
    assert [layer.mlp.experts.num_experts for layer in module.model.layers] == after
    assert [layer.mlp.gate.weight.shape[0] for layer in module.model.layers] == after
    assert {(layer.mlp.experts.hidden_dim, layer.mlp.gate.hidden_dim) for layer in module.model.layers} == {(hidden, hidden)}
    inner = model.model.layers[0].mlp.experts.intermediate_dim * hidden // 32  # width pruning halves it too
    assert {layer.mlp.experts.intermediate_dim for layer in module.model.layers} == {inner}
    with torch.no_grad():
        torch.testing.assert_close(_logits(module(**inputs)), graph_out, rtol=1e-4, atol=1e-4)
    module.train()
    _logits(module(**inputs)).sum().backward()
    assert module.model.layers[0].mlp.experts.gate_up_proj.grad is not None
    module.eval()
    if family != "mixtral" or backend == "onnxruntime":  # a standard or a recorded checkpoint
        _round_trip(compiled, tmp_path / "moe", inputs, after)


def _round_trip(compiled: sparsec.Compiled, path: Path, inputs: dict, after: list[int]) -> None:
    import transformers

    uniform = len(set(after)) == 1
    saved = compiled.save_pretrained(path)
    assert saved.loads_in_transformers is uniform, saved.reason
    if uniform:
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        assert getattr(reloaded.config, "num_local_experts", None) == after[0]
    else:
        reloaded = sparsec.hf.from_pretrained(path)
    assert [layer.mlp.experts.num_experts for layer in reloaded.model.layers] == after
    with torch.no_grad():
        expected = _logits(compiled.module(**inputs))
        torch.testing.assert_close(_logits(reloaded(**inputs)), expected, rtol=1e-4, atol=1e-4)


@needs_moe
def test_mixtral_tokens_whose_experts_are_kept_are_unchanged() -> None:
    """One Mixtral MoE block: removing 2 of 8 experts leaves every token that chose none of
    them exactly as it was (Mixtral renormalises the top-k weights); the others move."""
    model, _ = make_hf_moe("mixtral")
    block = model.model.layers[0].mlp
    hidden = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    compiled = sparsec.compile(
        block, (hidden,), pipeline="prune-experts{count=2}", backend="torch", calibration=[(hidden,)]
    )
    removed = _summary(compiled)["layers"][0]["removed"]
    with torch.no_grad():
        chosen = block.gate(hidden.reshape(-1, 32))[2]
        old, new = block(hidden).reshape(-1, 32), compiled(hidden).reshape(-1, 32)
    kept = ~torch.isin(chosen, torch.tensor(removed)).any(-1)
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(new[kept], old[kept], rtol=1e-5, atol=1e-6)
    assert (new[~kept] - old[~kept]).abs().amax(-1).min() > 1e-5


@needs_moe
def test_qwen2_moe_without_renormalisation_scales_the_kept_tokens_experts() -> None:
    """Qwen2-MoE's default router (norm_topk_prob=False): a token whose experts all stay
    gets their outputs scaled by 1 / (1 - the probability of the removed experts); the
    shared expert's part is unchanged."""
    model, _ = make_hf_moe("qwen2-moe", num_hidden_layers=1)
    assert model.config.norm_topk_prob is False
    block = model.model.layers[0].mlp
    hidden = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    compiled = sparsec.compile(
        block, (hidden,), pipeline="prune-experts{count=2}", backend="torch", calibration=[(hidden,)]
    )
    removed = torch.tensor(_summary(compiled)["layers"][0]["removed"])
    with torch.no_grad():
        x = hidden.reshape(-1, 32)
        logits, _, chosen = block.gate(x)
        lost = torch.softmax(logits, -1)[:, removed].sum(-1, keepdim=True)
        shared = torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
        old, new = block(hidden).reshape(-1, 32), compiled(hidden).reshape(-1, 32)
    kept = ~torch.isin(chosen, removed).any(-1)
    assert kept.any()
    torch.testing.assert_close((new - shared)[kept], ((old - shared) / (1 - lost))[kept], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(new[kept], old[kept], atol=1e-6)


def test_output_error_removes_the_expert_whose_removal_moves_the_output_least() -> None:
    model = TinyMoE().eval()
    compiled = sparsec.compile(
        model, (torch.randn(5, 8),), pipeline="prune-experts{count=1,criterion=output-error}",
        backend="torch", calibration=_tokens(),
    )
    (row,) = _summary(compiled)["layers"]
    assert row["removed"] == [min(range(4), key=lambda e: row["scores"][e])]
    assert len(row["scores"]) == 4 and min(row["scores"]) > 0
