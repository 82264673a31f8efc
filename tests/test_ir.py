"""The IR: tracing, the stable text form, the Rewriter, and verify()."""

from __future__ import annotations

import pytest
import torch
from models import TINY_MLP_IR, DataDependent, make_cnn_chain, make_mlp, make_tiny_mlp
from torch import nn

from sparsec.errors import RewriteError, TraceError, VerificationError
from sparsec.frontends import trace
from sparsec.ir import Change, Graph


@pytest.fixture
def chain() -> tuple[nn.Module, torch.Tensor, Graph]:
    model, x = make_cnn_chain()
    return model, x, trace(model, (x,))


# ---------------------------------------------------------------- tracing
def test_trace_gives_get_attr_parameters(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    model, _, graph = chain
    attrs = {str(n.target) for n in graph.nodes if n.op == "get_attr"}
    assert {name for name, _ in model.named_parameters()} <= attrs
    assert {"b1.running_mean", "b1.running_var", "b2.running_mean", "b2.running_var"} <= attrs
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    assert [n.name for n in placeholders] == ["x"]
    assert graph.input_specs[0].shape == ("batch", 3, 16, 16)
    assert graph.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_trace_has_dynamic_batch(chain: tuple[nn.Module, torch.Tensor, Graph], batch: int) -> None:
    model, _, graph = chain
    x = torch.randn(batch, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x))


def test_trace_widens_a_batch_of_one() -> None:
    model, x = make_mlp()
    graph = trace(model, (x[:1],))
    assert graph.input_specs[0].shape == ("batch", 16)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x))


class _MaskedTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).masked_fill(~keep[..., None], 0.0).sum(1)


def test_a_bool_padding_mask_follows_the_token_sequence() -> None:
    model = _MaskedTokens().eval()
    ids, keep = torch.randint(0, 50, (2, 5)), torch.rand(2, 5) > 0.3
    graph = trace(model, (ids, keep))
    assert [spec.shape for spec in graph.input_specs] == [("batch", "seq")] * 2
    ids, keep = torch.randint(0, 50, (3, 9)), torch.rand(3, 9) > 0.3
    with torch.no_grad():
        torch.testing.assert_close(graph(ids, keep), model(ids, keep))


def test_trace_does_not_modify_the_model(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    model, x, _ = chain
    fresh, _ = make_cnn_chain()
    assert not model.training
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_untraceable_model_raises_trace_error_with_fix() -> None:
    with pytest.raises(TraceError, match="Fix") as info:
        trace(DataDependent(), (torch.randn(2, 4),))
    assert "DataDependent" in str(info.value)


def test_trace_rejects_non_module() -> None:
    with pytest.raises(TraceError, match="nn.Module"):
        trace(lambda x: x, (torch.randn(2, 4),))  # type: ignore[arg-type]


# ---------------------------------------------------------------- text form
def test_text_form_is_stable_across_traces() -> None:
    first = str(trace(*make_cnn_chain()))
    second = str(trace(*make_cnn_chain()))
    assert first == second


def test_text_form_names_the_batch_dimension(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    text = str(chain[2])
    assert "%x: f32[batch, 3, 16, 16] = input" in text
    assert "@c1.weight: f32[8, 3, 3, 3]" in text
    assert "%linear: f32[batch, 10] = linear(%mean, @fc.weight, @fc.bias)" in text
    # the tracer's numbered symbols (s0, s77, ...) never leak into the text
    assert not any(tok.startswith("s") and tok[1:].isdigit() for tok in _tokens(text))


def _tokens(text: str) -> list[str]:
    for sep in "[](),=:%@":
        text = text.replace(sep, " ")
    return text.split()


def test_text_form_of_tiny_mlp() -> None:
    """The text form is spelled out in tests/models.py, where the passes' IR tests read it."""
    assert str(trace(*make_tiny_mlp())) == TINY_MLP_IR


# ---------------------------------------------------------------- rewriter
def test_slice_parameter_bumps_version_once_per_block(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    _, x, graph = chain
    keep = [0, 2, 4, 6]
    assert graph.version == 0
    with graph.rewrite("test-slice") as rw:
        rw.slice_parameter("fc.weight", axis=0, keep=keep)
        rw.slice_parameter("fc.bias", axis=0, keep=keep)
    assert graph.version == 1
    assert rw.changes == [
        Change("test-slice", "replace", "fc.weight", "(10, 16) -> (4, 16)"),
        Change("test-slice", "replace", "fc.bias", "(10,) -> (4,)"),
    ]
    graph.verify()
    assert graph(x).shape == (2, 4)
    assert "%linear: f32[batch, 4] = linear(%mean, @fc.weight, @fc.bias)" in str(graph)


def test_empty_rewrite_block_keeps_version(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    graph = chain[2]
    with graph.rewrite("test-nothing") as rw:
        pass
    assert rw.changes == []
    assert graph.version == 0


def test_slice_parameter_keeps_the_selected_values(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    model, x, graph = chain
    keep = [1, 3, 8]
    with graph.rewrite("test-slice") as rw:
        rw.slice_parameter("fc.weight", axis=0, keep=keep)
        rw.slice_parameter("fc.bias", axis=0, keep=keep)
    torch.testing.assert_close(graph.tensor("fc.weight"), model.fc.weight[keep])
    assert isinstance(graph.tensor("fc.weight"), nn.Parameter)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x)[:, keep])


def test_rewrite_does_not_mutate_the_users_model(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    model, _, graph = chain
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with graph.rewrite("test-slice") as rw:
        rw.slice_parameter("fc.weight", axis=0, keep=[1, 2])
        rw.slice_parameter("fc.bias", axis=0, keep=[1, 2])
        rw.replace_tensor("c1.weight", torch.zeros(8, 3, 3, 3))
    assert model.fc.weight.shape == (10, 16)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], msg=name)


def test_copy_shares_weights_and_rewrites_leave_the_original(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    _, x, graph = chain
    with torch.no_grad():
        expected = graph(x)
    twin = graph.copy()
    assert twin.tensor("fc.weight") is graph.tensor("fc.weight")  # no second copy of weights
    with twin.rewrite("test-slice") as rw:
        rw.slice_parameter("fc.weight", axis=0, keep=[1, 2])
        rw.slice_parameter("fc.bias", axis=0, keep=[1, 2])
        rw.replace_tensor("c1.weight", torch.zeros(8, 3, 3, 3))
    assert graph.tensor("fc.weight").shape[0] == 10
    with torch.no_grad():
        torch.testing.assert_close(graph(x), expected)
        assert twin(x).shape[1] == 2


def test_slice_out_of_range_raises(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    graph = chain[2]
    with pytest.raises(RewriteError, match="out of range"), graph.rewrite("test-slice") as rw:
        rw.slice_parameter("fc.bias", axis=0, keep=[0, 10])
    assert graph.version == 0


def test_erase_used_node_raises(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    graph = chain[2]
    relu = graph.node("relu")
    with (
        pytest.raises(RewriteError, match=r"cannot erase %relu: still used by %conv2d_1"),
        graph.rewrite("test-erase") as rw,
    ):
        rw.erase(relu)
    assert graph.version == 0
    assert "relu" in [n.name for n in graph.nodes]  # a failed rewrite restores the graph


def test_erase_unused_node(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    _, x, graph = chain
    relu = graph.node("relu")
    with graph.rewrite("test-insert") as rw:
        extra = rw.insert_call(torch.ops.aten.neg.default, (relu,), after=relu)
    assert graph.version == 1
    with graph.rewrite("test-erase") as rw:
        rw.erase(extra)
    assert graph.version == 2
    assert [c.kind for c in rw.changes] == ["erase"]
    graph.verify()
    graph(x)


def test_inconsistent_slice_is_caught_naming_the_node(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    # slicing a conv's output channels without its bias, BN and consumer breaks the graph
    graph = chain[2]
    with (
        pytest.raises(VerificationError, match=r"%conv2d = aten.conv2d.default"),
        graph.rewrite("test-break") as rw,
    ):
        rw.slice_parameter("c1.weight", axis=0, keep=[0, 1, 2, 3])
    # the failed rewrite was rolled back: the graph is whole again
    graph.verify()
    assert graph.tensor("c1.weight").shape[0] == 8


def test_verify_names_the_consumer_of_an_inconsistent_slice(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    # slice the whole producer side (conv rows, bias, BN) but not the next conv's input
    graph = chain[2]
    keep = [0, 1, 2, 3]
    with (
        pytest.raises(VerificationError, match=r"%conv2d_1 = aten.conv2d.default"),
        graph.rewrite("test-break") as rw,
    ):
        for target in ["c1.weight", "c1.bias", "b1.weight", "b1.bias"]:
            rw.slice_parameter(target, axis=0, keep=keep)
        for target in ["b1.running_mean", "b1.running_var"]:
            rw.slice_parameter(target, axis=0, keep=keep)
    graph.verify()  # rolled back
    assert graph.tensor("b1.running_var").shape[0] == 8


def test_failed_rewrite_bumps_version_or_rolls_back(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    graph = chain[2]
    text = str(graph)
    with pytest.raises(VerificationError), graph.rewrite("test-break") as rw:
        rw.slice_parameter("c1.weight", axis=0, keep=[0, 1, 2, 3])
    rolled_back = str(graph) == text and graph.tensor("c1.weight").shape[0] == 8
    assert rolled_back or graph.version != 0


def test_verify_reports_missing_attribute(chain: tuple[nn.Module, torch.Tensor, Graph]) -> None:
    graph = chain[2]
    del graph.module.fc._parameters["bias"]
    with pytest.raises(VerificationError, match="fc.bias"):
        graph.verify()


def test_training_the_graph_does_not_change_the_users_model(
    chain: tuple[nn.Module, torch.Tensor, Graph],
) -> None:
    model, x, graph = chain
    before = model.fc.bias.detach().clone()
    optimizer = torch.optim.SGD(graph.module.parameters(), lr=0.1)
    graph(x).sum().backward()
    optimizer.step()
    torch.testing.assert_close(model.fc.bias.detach(), before)


def test_export_program_is_cached_until_the_graph_changes() -> None:
    graph = trace(*make_tiny_mlp())
    first = graph.export_program()
    assert graph.export_program() is first  # lowering then saving exports once
    with graph.rewrite("test-slice") as rw:
        rw.slice_parameter("fc2.weight", axis=0, keep=[0])
        rw.slice_parameter("fc2.bias", axis=0, keep=[0])
    second = graph.export_program()
    assert second is not first
    graph.module.fc2.bias = nn.Parameter(torch.zeros(1))  # replaced outside the rewriter
    third = graph.export_program()
    assert third is not second
    assert torch.equal(third.state_dict["fc2.bias"], torch.zeros(1))


def test_verify_repropagates_only_when_what_shapes_depend_on_changed(
    chain: tuple[nn.Module, torch.Tensor, Graph], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rewrite (which propagates), verify() does not propagate again; a tensor whose
    shape changed behind the rewriter's back is still caught."""
    graph = chain[2]
    with graph.rewrite("test-slice") as rw:
        rw.slice_parameter("fc.weight", axis=0, keep=[0, 1])
        rw.slice_parameter("fc.bias", axis=0, keep=[0, 1])
    calls = []
    real = Graph.propagate_shapes
    monkeypatch.setattr(Graph, "propagate_shapes", lambda self: calls.append(1) or real(self))
    graph.verify()
    assert calls == []
    graph.module.c1.weight = nn.Parameter(graph.module.c1.weight[:3].detach().clone())
    with pytest.raises(VerificationError):
        graph.verify()
    assert calls == [1]
