"""`block-influence` and `prune-blocks`: depth pruning of repeated residual blocks.

A stack of residual blocks where two barely change their input (tiny second weights):
block influence must rank them lowest, `prune-blocks{count=2}` must remove exactly them,
their parameters go, the output shape stays and the function barely moves. Refusals:
removing every block, and blocks that are not one-hidden-state-in, one-out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from zoo import ZOO, hf_available

import sparsec
from sparsec.calibration import Calibration
from sparsec.errors import PassError
from sparsec.frontends import trace
from sparsec.passes.analysis.block_influence import BlockInfluence, find_blocks
from sparsec.passes.rewrite import PruneBlocks
from sparsec.pipeline import AnalysisManager, PassManager, VerifyEach


class Residual(nn.Module):
    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        with torch.no_grad():
            self.fc2.weight.mul_(scale)
            self.fc2.bias.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Stack(nn.Module):
    """Blocks 1 and 3 are nearly identities."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([Residual(16, s) for s in (1.0, 1e-3, 1.0, 1e-3)])
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return x + y, y


class Pairs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TwoOutputs(), TwoOutputs()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.blocks[0](x)
        c, d = self.blocks[1](a)
        return c + b + d


def _batches() -> list[tuple[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 8, generator=generator),) for _ in range(3)]


def test_blocks_are_found_with_their_hidden_state() -> None:
    blocks = find_blocks(trace(Stack().eval(), (torch.randn(2, 8),)))
    assert [b.path for b in blocks] == [f"blocks.{i}" for i in range(4)]
    assert all(b.removable for b in blocks)


def test_the_near_identity_blocks_go_and_the_rest_stays() -> None:
    model = Stack().eval()
    x = torch.randn(5, 8)
    compiled = sparsec.compile(
        model, (torch.randn(2, 8),), pipeline="prune-blocks{count=2}", backend="torch",
        calibration=_batches(),
    )
    summary = dict(compiled.report.pass_summaries)["prune-blocks{ratio=0.25,count=2,metric=block-influence}"]
    assert summary["removed"] == ["blocks.1", "blocks.3"]
    scores = {b["block"]: b["score"] for b in summary["blocks"]}
    assert max(scores["blocks.1"], scores["blocks.3"]) < min(scores["blocks.0"], scores["blocks.2"])
    names = set(compiled.graph.module.state_dict())
    assert not any(n.startswith(("blocks.1.", "blocks.3.")) for n in names)
    assert any(n.startswith("blocks.2.") for n in names)
    with torch.no_grad():
        expected, actual = model(x), compiled(x)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-2)
    module = compiled.to_module()  # the user's class, two blocks fewer, renumbered
    assert isinstance(module, Stack) and len(module.blocks) == 2
    assert set(module.state_dict()) == {n.replace("blocks.2.", "blocks.1.") for n in names}
    with torch.no_grad():
        assert torch.allclose(module(x), actual, atol=1e-5)


def test_loss_delta_is_the_loss_increase_of_bypassing_each_block() -> None:
    model = Stack().eval()

    def loss(outputs: torch.Tensor, batch: tuple[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return (outputs - model(batch[0])).square().mean()  # 0 for the dense model

    graph = trace(model, (torch.randn(2, 8),))
    calibration = Calibration(_batches(), loss_fn=loss)
    blocks = AnalysisManager(graph, calibration).get(BlockInfluence(metric="loss-delta"))
    expected = {}
    for index in range(4):  # the same model with block `index` replaced by an identity
        bypassed = Stack().eval()
        bypassed.blocks[index] = nn.Identity()
        deltas = [float(loss(bypassed(b[0]), b) - loss(model(b[0]), b)) for b in _batches()]
        expected[f"blocks.{index}"] = sum(deltas) / len(deltas)
    assert {b.path: b.score for b in blocks} == pytest.approx(expected, rel=1e-4, abs=1e-7)
    compiled = sparsec.compile(
        model, (torch.randn(2, 8),), pipeline="prune-blocks{count=2,metric=loss-delta}",
        backend="torch", calibration=calibration,
    )
    summary = next(s for n, s in compiled.report.pass_summaries if n.startswith("prune-blocks"))
    assert sorted(summary["removed"]) == ["blocks.1", "blocks.3"]


def test_loss_delta_without_a_loss_is_refused() -> None:
    with pytest.raises(PassError, match="loss_fn"):
        sparsec.compile(
            Stack().eval(), (torch.randn(2, 8),), pipeline="prune-blocks{count=1,metric=loss-delta}",
            backend="torch", calibration=_batches(),
        )


def test_removing_every_block_is_refused() -> None:
    with pytest.raises(PassError, match="every block of blocks"):
        sparsec.compile(
            Stack().eval(), (torch.randn(2, 8),), pipeline="prune-blocks{ratio=1.0}", backend="torch",
            calibration=_batches(),
        )


def test_blocks_with_two_outputs_are_kept_with_the_reason() -> None:
    compiled = sparsec.compile(
        Pairs().eval(), (torch.randn(2, 8),), pipeline="prune-blocks{ratio=0.5}", backend="torch",
        calibration=_batches(),
    )
    summary = next(s for name, s in compiled.report.pass_summaries if name.startswith("prune-blocks"))
    assert all("values leave it" in b["kept_because"] for b in summary["blocks"])
    assert "removed" not in summary


def test_a_llama_loses_a_decoder_layer_exports_to_onnx_and_saves_a_checkpoint(tmp_path: Path) -> None:
    if not hf_available("LlamaForCausalLM"):
        pytest.skip("transformers has no LlamaForCausalLM")
    model, inputs = ZOO["llama-gqa"].build()
    compiled = sparsec.compile(
        model, inputs, pipeline="prune-blocks{count=1}", calibration=[inputs, inputs],
    )
    assert compiled.report.backend == "onnxruntime", compiled.report.backend_reason
    summary = next(s for name, s in compiled.report.pass_summaries if name.startswith("prune-blocks"))
    assert len(summary["removed"]) == 1 and summary["removed"][0].startswith("model.layers.")
    layers = {n.split(".")[2] for n in compiled.graph.module.state_dict() if n.startswith("model.layers.")}
    assert len(layers) == model.config.num_hidden_layers - 1
    with torch.no_grad():
        expected = compiled.graph.module(**inputs)
        actual = compiled(**inputs)
    expected = expected.logits if hasattr(expected, "logits") else expected[0]
    assert torch.allclose(actual.logits if hasattr(actual, "logits") else actual[0], expected, atol=1e-4)
    # the module and its checkpoint have one layer fewer, and plain transformers loads it
    import transformers

    assert compiled.module.config.num_hidden_layers == model.config.num_hidden_layers - 1
    saved = compiled.save_pretrained(tmp_path / "checkpoint")
    assert saved.loads_in_transformers, saved.reason
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-4)


# ---------------------------------------------------------------- Before / Expected IR
def test_stack_ir() -> None:
    """The near-identity blocks 1 and 3 go: block 2 reads block 0's sum, the head block 2's."""
    model = Stack().eval()
    graph = trace(model, (torch.randn(2, 8),))
    before = """\
@stem.weight: f32[16, 8]
@stem.bias: f32[16]
@blocks.0.fc1.weight: f32[32, 16]
@blocks.0.fc1.bias: f32[32]
@blocks.0.fc2.weight: f32[16, 32]
@blocks.0.fc2.bias: f32[16]
@blocks.1.fc1.weight: f32[32, 16]
@blocks.1.fc1.bias: f32[32]
@blocks.1.fc2.weight: f32[16, 32]
@blocks.1.fc2.bias: f32[16]
@blocks.2.fc1.weight: f32[32, 16]
@blocks.2.fc1.bias: f32[32]
@blocks.2.fc2.weight: f32[16, 32]
@blocks.2.fc2.bias: f32[16]
@blocks.3.fc1.weight: f32[32, 16]
@blocks.3.fc1.bias: f32[32]
@blocks.3.fc2.weight: f32[16, 32]
@blocks.3.fc2.bias: f32[16]
@head.weight: f32[4, 16]
@head.bias: f32[4]
%x: f32[batch, 8] = input
%linear: f32[batch, 16] = linear(%x, @stem.weight, @stem.bias)
%linear_1: f32[batch, 32] = linear(%linear, @blocks.0.fc1.weight, @blocks.0.fc1.bias)
%relu: f32[batch, 32] = relu(%linear_1)
%linear_2: f32[batch, 16] = linear(%relu, @blocks.0.fc2.weight, @blocks.0.fc2.bias)
%add: f32[batch, 16] = add.Tensor(%linear, %linear_2)
%linear_3: f32[batch, 32] = linear(%add, @blocks.1.fc1.weight, @blocks.1.fc1.bias)
%relu_1: f32[batch, 32] = relu(%linear_3)
%linear_4: f32[batch, 16] = linear(%relu_1, @blocks.1.fc2.weight, @blocks.1.fc2.bias)
%add_1: f32[batch, 16] = add.Tensor(%add, %linear_4)
%linear_5: f32[batch, 32] = linear(%add_1, @blocks.2.fc1.weight, @blocks.2.fc1.bias)
%relu_2: f32[batch, 32] = relu(%linear_5)
%linear_6: f32[batch, 16] = linear(%relu_2, @blocks.2.fc2.weight, @blocks.2.fc2.bias)
%add_2: f32[batch, 16] = add.Tensor(%add_1, %linear_6)
%linear_7: f32[batch, 32] = linear(%add_2, @blocks.3.fc1.weight, @blocks.3.fc1.bias)
%relu_3: f32[batch, 32] = relu(%linear_7)
%linear_8: f32[batch, 16] = linear(%relu_3, @blocks.3.fc2.weight, @blocks.3.fc2.bias)
%add_3: f32[batch, 16] = add.Tensor(%add_2, %linear_8)
%linear_9: f32[batch, 4] = linear(%add_3, @head.weight, @head.bias)
return [%linear_9]
"""
    expected = """\
@stem.weight: f32[16, 8]
@stem.bias: f32[16]
@blocks.0.fc1.weight: f32[32, 16]
@blocks.0.fc1.bias: f32[32]
@blocks.0.fc2.weight: f32[16, 32]
@blocks.0.fc2.bias: f32[16]
@blocks.2.fc1.weight: f32[32, 16]
@blocks.2.fc1.bias: f32[32]
@blocks.2.fc2.weight: f32[16, 32]
@blocks.2.fc2.bias: f32[16]
@head.weight: f32[4, 16]
@head.bias: f32[4]
%x: f32[batch, 8] = input
%linear: f32[batch, 16] = linear(%x, @stem.weight, @stem.bias)
%linear_1: f32[batch, 32] = linear(%linear, @blocks.0.fc1.weight, @blocks.0.fc1.bias)
%relu: f32[batch, 32] = relu(%linear_1)
%linear_2: f32[batch, 16] = linear(%relu, @blocks.0.fc2.weight, @blocks.0.fc2.bias)
%add: f32[batch, 16] = add.Tensor(%linear, %linear_2)
%linear_5: f32[batch, 32] = linear(%add, @blocks.2.fc1.weight, @blocks.2.fc1.bias)
%relu_2: f32[batch, 32] = relu(%linear_5)
%linear_6: f32[batch, 16] = linear(%relu_2, @blocks.2.fc2.weight, @blocks.2.fc2.bias)
%add_2: f32[batch, 16] = add.Tensor(%add, %linear_6)
%linear_9: f32[batch, 4] = linear(%add_2, @head.weight, @head.bias)
return [%linear_9]
"""
    assert str(graph) == before
    am = AnalysisManager(graph, Calibration(_batches()))
    run = PassManager([PruneBlocks(count=2)], instruments=[VerifyEach()]).run(graph, am)
    ((_, result),) = run.results
    assert str(graph) == expected
    assert result is not None and result.changed and graph.version == 1
    assert not any(k.startswith(("blocks.1.", "blocks.3.")) for k in graph.module.state_dict())
    # exactly the model without blocks 1 and 3, at two batch sizes
    for batch in (1, 5):
        x = torch.randn(batch, 8)
        with torch.no_grad():
            kept = model.head(model.blocks[2](model.blocks[0](model.stem(x))))
            torch.testing.assert_close(graph(x), kept)
