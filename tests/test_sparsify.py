"""sparsify: IR and changed flag, masks meet patterns (linear and conv), ignore/overrides, grouped
convs, SparseGPT beats magnitude."""

from __future__ import annotations

import pytest
import torch
from models import TINY_MLP_IR, make_tiny_mlp

from sparsec.calibration import Calibration
from sparsec.errors import PassError, PreconditionError
from sparsec.frontends import trace
from sparsec.ir import Graph
from sparsec.ops import check_mask, recorded_masks
from sparsec.passes.analysis import DependencyGroups
from sparsec.passes.rewrite import Sparsify
from sparsec.pipeline import AnalysisManager, PassManager, PassResult, VerifyEach


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 48),
        torch.nn.ReLU(),
        torch.nn.Linear(48, 10),
    ).eval()


def _calibration(seed: int = 1, batches: int = 4) -> Calibration:
    gen = torch.Generator().manual_seed(seed)
    # correlated inputs, as real activations are: where a Hessian helps
    mix = torch.randn(32, 32, generator=gen)
    return Calibration([torch.randn(64, 32, generator=gen) @ mix for _ in range(batches)])


def _run(graph: Graph, p: Sparsify, calibration: Calibration | None = None) -> PassResult:
    am = AnalysisManager(graph, calibration)
    (result,) = [r for _, r in PassManager([p], instruments=[VerifyEach()]).run(graph, am).results]
    assert result is not None
    return result


EVERY_METHOD = pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])


def every_pattern(block: tuple[int, int]) -> pytest.MarkDecorator:
    """Parametrize `options` over unstructured 60%, 2:4, 4:8 and 50% of `block`-sized blocks."""
    return pytest.mark.parametrize(
        "options",
        [
            {"pattern": "unstructured", "sparsity": 0.6},
            {"pattern": "nm", "n": 2, "m": 4},
            {"pattern": "nm", "n": 4, "m": 8},
            {"pattern": "block", "block": block, "sparsity": 0.5},
        ],
        ids=["unstructured", "2:4", "4:8", f"block{block[0]}x{block[1]}"],
    )


@EVERY_METHOD
@every_pattern(block=(2, 4))
def test_masks_meet_the_pattern(method: str, options: dict) -> None:
    graph = trace(_mlp(), (torch.randn(2, 32),))
    text_before = str(graph)
    p = Sparsify(method=method, **options)  # type: ignore[arg-type]
    result = _run(graph, p, _calibration())
    assert result.changed and graph.version == 1
    assert str(graph) == text_before  # same IR: only weight values change
    masks = recorded_masks(graph.module)
    assert sorted(masks) == ["0.weight", "2.weight", "4.weight"]
    for target, recorded in masks.items():
        weight = graph.tensor(target)
        assert check_mask(recorded.mask, recorded.pattern) is None
        assert torch.all(weight[~recorded.mask] == 0)
        expected = recorded.pattern.target_sparsity
        assert abs(1 - float(recorded.mask.float().mean()) - expected) < 0.02
    assert [row["note"] for row in result.summary.layers] == [method] * 3


def test_masks_are_ir_state_and_the_channel_groups_survive() -> None:
    """Masks are set through the Rewriter (logged, rolled back with the graph), and the
    dependency groups, which read shapes only, stay cached across the pass."""
    graph = trace(_mlp(), (torch.randn(2, 32),))
    am = AnalysisManager(graph)
    groups = am.get(DependencyGroups())
    run = PassManager([Sparsify(sparsity=0.5)]).run(graph, am)
    (result,) = [r for _, r in run.results]
    assert result is not None
    assert [c.target for c in result.changes if c.kind == "mask"] == ["0.weight", "2.weight", "4.weight"]
    assert am.is_cached(DependencyGroups()) and am.get(DependencyGroups()) is groups
    before = recorded_masks(graph.module)
    with pytest.raises(RuntimeError), graph.rewrite("test-fails") as rw:
        rw.drop_mask("0.weight")
        raise RuntimeError("the pass fails after editing")
    assert recorded_masks(graph.module) == before


def test_ignore_overrides_and_ragged_layers_are_reported() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10), torch.nn.Linear(10, 8)
    )
    graph = trace(model, (torch.randn(2, 32),))
    result = _run(graph, Sparsify(pattern="nm", ignore=("0",), overrides=(("2", 0.1),)))
    rows = {row["layer"]: row for row in result.summary.layers}
    assert rows["0.weight"]["note"] == "skipped: ignored"
    assert "not a multiple of m=4" in rows["3.weight"]["note"]
    assert rows["2.weight"]["pattern"] == "2:4"
    assert torch.equal(graph.tensor("0.weight"), model[0].weight)
    assert sorted(recorded_masks(graph.module)) == ["2.weight"]
    graph = trace(model, (torch.randn(2, 32),))
    result = _run(graph, Sparsify(sparsity=0.5, overrides=(("0.*", 0.9), ("*", 0.2))))
    sparsity = {row["layer"]: row["sparsity"] for row in result.summary.layers}
    assert sparsity == pytest.approx({"0.weight": 0.9, "2.weight": 0.2, "3.weight": 0.2}, abs=1e-3)


def test_no_layers_means_no_change() -> None:
    graph = trace(torch.nn.ReLU(), (torch.randn(2, 3),))
    assert not _run(graph, Sparsify()).changed
    assert graph.version == 0


def test_n_must_be_below_m() -> None:
    with pytest.raises(ValueError, match="n < m"):
        Sparsify(pattern="nm", n=4, m=4)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_data_aware_methods_need_calibration(method: str) -> None:
    graph = trace(_mlp(), (torch.randn(2, 32),))
    with pytest.raises(PassError, match="needs calibration data") as info:
        _run(graph, Sparsify(method=method))  # type: ignore[arg-type]
    assert isinstance(info.value, PreconditionError)


def _layer_error(
    model: torch.nn.Module, graph: Graph, calibration: Calibration, index: int
) -> float:
    """‖W X − Ŵ X‖² of layer `index` on the dense model's inputs to it."""
    inputs = []
    hook = model[index].register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
    with torch.no_grad():
        for (x,), _ in calibration:
            model(x)
    hook.remove()
    x = torch.cat(inputs)
    dense, sparse = model[index].weight, graph.tensor(f"{index}.weight")
    return float((x @ (dense - sparse).T).pow(2).sum().detach())


@pytest.mark.parametrize(
    "options",
    [
        {"pattern": "unstructured", "sparsity": 0.5},
        {"pattern": "nm", "n": 2, "m": 4},
        {"pattern": "block", "block": (4, 1), "sparsity": 0.5},
    ],
    ids=["unstructured", "2:4", "block4x1"],
)
@pytest.mark.parametrize("seed", [0])
def test_sparsegpt_reconstructs_better_than_magnitude(options: dict, seed: int) -> None:
    model, calibration = _mlp(seed), _calibration(seed + 10)
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        graph = trace(model, (torch.randn(2, 32),))
        _run(graph, Sparsify(method=method, **options), calibration)  # type: ignore[arg-type]
        errors[method] = _layer_error(
            model, graph, calibration, 0
        )  # the first layer sees dense inputs
    assert errors["sparsegpt"] < errors["magnitude"], errors


def test_sparsegpt_streams_stage_by_stage() -> None:
    graph = trace(_mlp(), (torch.randn(2, 32),))
    result = _run(graph, Sparsify(method="sparsegpt", layers_per_stage=1), _calibration(batches=3))
    # three stages; the largest boundary held: 3 batches × 64 rows × 64 GELU outputs (or 48) in fp32
    assert result.summary.stages == 3
    assert result.summary.peak_calibration_bytes == 3 * 64 * 64 * 4


# ---------------------------------------------------------------- conv layers
def _cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 8, 1),
    ).eval()


def _image_calibration(seed: int = 1, batches: int = 3) -> Calibration:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, 8, generator=gen)  # correlated channels
    return Calibration(
        [
            torch.einsum("dc,bchw->bdhw", mix, torch.randn(4, 8, 9, 7, generator=gen))
            for _ in range(batches)
        ]
    )


def _conv_groups(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A conv mask as [out, *kernel, in / size, size]: `size` consecutive input channels of
    one kernel position (written out here, not through weight_matrix)."""
    out_channels, channels, kh, kw = mask.shape
    return mask.permute(0, 2, 3, 1).reshape(out_channels, kh, kw, channels // size, size)


@EVERY_METHOD
@every_pattern(block=(4, 4))
def test_conv_masks_meet_the_pattern(method: str, options: dict) -> None:
    graph = trace(_cnn(), (torch.randn(2, 8, 9, 7),))
    p = Sparsify(method=method, layers=("linear", "conv"), **options)  # type: ignore[arg-type]
    result = _run(graph, p, _image_calibration())
    masks = recorded_masks(graph.module)
    assert sorted(masks) == ["0.weight", "2.weight", "4.weight"]
    for target, recorded in masks.items():
        mask, weight = recorded.mask, graph.tensor(target)
        assert mask.shape == weight.shape and torch.all(weight[~mask] == 0)
        assert check_mask(mask, recorded.pattern) is None
        out_channels, columns = mask.shape[0], mask[0].numel()
        if recorded.pattern.kind == "nm":
            n, m = recorded.pattern.n, recorded.pattern.m
            assert torch.all(_conv_groups(mask, m).sum(-1) <= n)
        elif recorded.pattern.kind == "block":
            blocks = _conv_groups(mask, 4).reshape(out_channels // 4, 4, -1, 4).sum((1, 3))
            assert torch.all((blocks == 0) | (blocks == 16))
            assert int((blocks == 0).sum()) == round(0.5 * blocks.numel())
        elif method == "magnitude":
            assert int((~mask).sum()) == round(0.6 * mask.numel())
        elif method == "wanda":  # exact per output channel
            assert torch.all((~mask).reshape(out_channels, -1).sum(1) == round(0.6 * columns))
        else:  # exact per column block of 128
            widths = [min(128, columns - s) for s in range(0, columns, 128)]
            assert int((~mask).sum()) == sum(round(0.6 * out_channels * w) for w in widths)
    assert [row["note"] for row in result.summary.layers] == [method] * 3


def test_convs_are_opt_in_and_other_convs_are_reported() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 1),
        torch.nn.ConvTranspose2d(8, 8, 2),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 8),
    )
    graph = trace(model, (torch.randn(2, 4, 5, 5),))
    _run(graph, Sparsify())
    assert sorted(recorded_masks(graph.module)) == ["3.weight"]
    graph = trace(model, (torch.randn(2, 4, 5, 5),))
    result = _run(graph, Sparsify(layers=("conv",)))
    assert sorted(recorded_masks(graph.module)) == ["0.weight"]
    notes = [row["note"] for row in result.summary.layers]
    assert (
        "skipped: aten.conv_transpose2d.input is not sparsified (conv1d and conv2d only)" in notes
    )


def test_grouped_and_depthwise_convs_are_sparsified_per_group() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1, groups=2),  # 4 input channels per group
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
    ).eval()
    example, calibration = (torch.randn(2, 8, 9, 7),), _image_calibration()
    layers = ("conv",)
    graph = trace(model, example)
    result = _run(graph, Sparsify(pattern="nm", method="sparsegpt", layers=layers), calibration)
    rows = {row["layer"]: row for row in result.summary.layers}
    assert rows["0.weight"]["note"] == "sparsegpt, per group (2 groups)"
    assert torch.all(_conv_groups(graph.tensor("0.weight") != 0, 4).sum(-1) <= 2)
    assert rows["2.weight"]["note"] == (
        "skipped: 1 input channels per group is not a multiple of m=4 "
        "(an N:M group is m input channels of one kernel position)"
    )
    # a block may not span two groups: 8 output channels per group, blocks of 16 rows
    result = _run(trace(model, example), Sparsify(pattern="block", block=(16, 4), layers=layers))
    assert "8 output channels per group" in result.summary.layers[0]["note"]
    graph = trace(model, example)
    result = _run(graph, Sparsify(method="wanda", sparsity=0.5, layers=layers), calibration)
    # Wanda prunes per output channel: round(0.5 · 9) = 4 of a depthwise 3×3 channel's 9
    sparsity = [row["sparsity"] for row in result.summary.layers]
    assert sparsity == pytest.approx([0.5, 4 / 9], abs=1e-4)


def _conv_layer_error(
    model: torch.nn.Module, graph: Graph, calibration: Calibration, index: int
) -> float:
    """‖conv(X, W) − conv(X, Ŵ)‖² of conv `index` on the dense model's inputs to it."""
    conv, error = model[index], 0.0
    sparse = graph.tensor(f"{index}.weight")
    with torch.no_grad():
        for (x,), _ in calibration:
            x = model[:index](x)
            delta = conv.weight - sparse
            error += float(
                torch.nn.functional.conv2d(x, delta, None, conv.stride, conv.padding).pow(2).sum()
            )
    return error


@pytest.mark.parametrize(
    "options",
    [{"pattern": "unstructured", "sparsity": 0.5}, {"pattern": "nm", "n": 2, "m": 4}],
    ids=["unstructured", "2:4"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_sparsegpt_reconstructs_conv_better_than_magnitude(options: dict, seed: int) -> None:
    model, calibration = _cnn(seed), _image_calibration(seed + 10)
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        graph = trace(model, (torch.randn(2, 8, 9, 7),))
        p = Sparsify(method=method, layers=("conv",), **options)  # type: ignore[arg-type]
        _run(graph, p, calibration)
        errors[method] = _conv_layer_error(model, graph, calibration, 0)  # sees dense inputs
    assert errors["sparsegpt"] < errors["magnitude"], errors


# ---------------------------------------------------------------- Before / Expected IR
def test_tiny_mlp_ir() -> None:
    """2:4 by magnitude: the IR text stays as it was, only weight values and masks change."""
    model, x = make_tiny_mlp()
    graph = trace(model, (x,))
    before = TINY_MLP_IR
    expected = before
    assert str(graph) == before
    result = _run(graph, Sparsify(pattern="nm", n=2, m=4))
    assert str(graph) == expected
    assert result.changed and graph.version == 1
    # the two largest |w| of each row's four, e.g. fc1 row 0 = [-0.004, 0.268, -0.412, -0.368]
    kept = {
        "fc1.weight": torch.tensor([[0, 0, 1, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]]),
        "fc2.weight": torch.tensor([[0, 1, 0, 1], [0, 0, 1, 1]]),
    }
    masks = recorded_masks(graph.module)
    assert sorted(masks) == sorted(kept)
    for target, mask in kept.items():
        assert str(masks[target].pattern) == "2:4"
        assert masks[target].mask.tolist() == mask.bool().tolist()
        torch.testing.assert_close(graph.tensor(target), model.get_parameter(target) * mask)
    torch.testing.assert_close(graph.tensor("fc1.bias"), model.fc1.bias)
    torch.testing.assert_close(graph.tensor("fc2.bias"), model.fc2.bias)
    linear = torch.nn.functional.linear
    with torch.no_grad():
        hidden = linear(x, model.fc1.weight * kept["fc1.weight"], model.fc1.bias).relu()
        masked = linear(hidden, model.fc2.weight * kept["fc2.weight"], model.fc2.bias)
        torch.testing.assert_close(graph(x), masked)
