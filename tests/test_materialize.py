"""compiled.module is the user's own model again: it trains, switches modes, saves, exports.

Rules checked, for a CNN with BatchNorm and dropout and for each Hugging Face family of the
zoo (small configs, random weights):
- the module is of the user's class, with the pruned widths, and reproduces the graph;
- `.train()`/`.eval()` switch semantics: BatchNorm statistics move only in training, dropout
  changes outputs only in training; one optimizer step changes the outputs;
- `state_dict` keys are the original names and load back; `copy.deepcopy`, `torch.compile`
  and both ONNX exporters work on it;
- a class whose forward reads a width sparsec cannot update gets a MaterializeError naming
  the module and attribute, and compiled.module falls back to the graph module;
- after fine-tuning, `save()` ships the trained weights (the executable is rebuilt).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree
from zoo import ZOO, hf_available

import sparsec
from sparsec.errors import MaterializeError
from sparsec.materialize import register_updater

HF_FAMILIES = ["bert", "distilbert", "gpt2", "llama-gqa", "qwen2-gqa", "vit", "t5-encoder"]


class BnDropoutCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.b2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)) + h)
        return self.fc(self.drop(h.mean((2, 3))))


def _call(module: Any, inputs: Any) -> Any:
    return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


def _first(out: Any) -> torch.Tensor:
    return next(
        t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


def _cnn() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = BnDropoutCnn().eval()
    with torch.no_grad():
        for bn in (model.b1, model.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(4, 3, 8, 8),)


_COMPILED: dict[str, Any] = {}


def _compiled(name: str) -> tuple[nn.Module, Any, Any]:
    if name not in _COMPILED:
        if name == "cnn":
            model, inputs = _cnn()
        else:
            entry = ZOO[name]
            if not hf_available(entry.needs or ""):
                pytest.skip(f"transformers.{entry.needs} is not available")
            model, inputs = entry.build()
        _COMPILED[name] = (
            model,
            inputs,
            sparsec.compile(model, inputs, backend="torch", pipeline="structured-50"),
        )
    return _COMPILED[name]


NAMES = ["cnn", *HF_FAMILIES]


@pytest.mark.parametrize("name", NAMES)
def test_module_is_the_users_class_with_pruned_widths(name: str) -> None:
    model, inputs, compiled = _compiled(name)
    module = compiled.to_module()
    assert module is compiled.module and type(module) is type(model)
    assert sum(p.numel() for p in module.parameters()) < sum(p.numel() for p in model.parameters())
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            _first(_call(module, inputs)), _first(_call(compiled.graph.module, inputs))
        )
    assert any("compiled.module is a" in note for note in compiled.report.notes)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keeps_the_original_names_and_loads_back(name: str) -> None:
    model, inputs, compiled = _compiled(name)
    module = compiled.module.eval()
    state = module.state_dict()
    assert set(state) == set(model.state_dict())
    twin = copy.deepcopy(module)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    twin.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(_first(_call(twin, inputs)), _first(_call(module, inputs)))
    twin.train()
    assert not module.training  # the deep copy is independent


@pytest.mark.parametrize("name", NAMES)
def test_train_eval_switch_dropout_and_one_step_changes_outputs(name: str) -> None:
    _, inputs, compiled = _compiled(name)
    module = copy.deepcopy(compiled.module)
    with torch.no_grad():
        module.eval()
        a, b = _first(_call(module, inputs)), _first(_call(module, inputs))
        torch.testing.assert_close(a, b)
        if any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()):
            module.train()
            torch.manual_seed(1)
            c = _first(_call(module, inputs))
            torch.manual_seed(2)
            assert not torch.allclose(c, _first(_call(module, inputs))), (
                "dropout must be active in training"
            )
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    _first(_call(module, inputs)).pow(2).mean().backward()
    trained = [p for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert trained, "the parameters receive gradients"
    optimizer.step()
    module.eval()
    with torch.no_grad():
        assert not torch.allclose(a, _first(_call(module, inputs)))


def test_batchnorm_statistics_move_only_in_training() -> None:
    _, (x,), compiled = _compiled("cnn")
    module = copy.deepcopy(compiled.module)
    before = module.b1.running_mean.clone()
    module.eval()
    with torch.no_grad():
        module(x)
    assert torch.equal(module.b1.running_mean, before)
    module.train()
    with torch.no_grad():
        module(x)
    assert not torch.equal(module.b1.running_mean, before)
    assert module.b1.num_features == module.b1.running_mean.numel() < 16


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", NAMES)
def test_both_onnx_exporters(name: str, dynamo: bool, tmp_path: Any) -> None:
    if dynamo and ZOO.get(name) is not None and ZOO[name].onnx_broken:
        pytest.skip(ZOO[name].onnx_broken)
    model, inputs, compiled = _compiled(name)
    module = copy.deepcopy(compiled.module).eval()
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
    path = tmp_path / "m.onnx"
    try:
        torch.onnx.export(module, args, str(path), kwargs=kwargs or None, dynamo=dynamo)
    except Exception as exc:
        try:  # the exporter may not express the family at all: then it is not ours to fix
            torch.onnx.export(
                model, args, str(tmp_path / "dense.onnx"), kwargs=kwargs or None, dynamo=dynamo
            )
        except Exception as dense_exc:
            pytest.skip(
                f"the exporter fails on the unpruned model too: {str(dense_exc).splitlines()[0]}"
            )
        raise exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(
        zip(
            [i.name for i in session.get_inputs()],
            [t.numpy() for t in [*args, *kwargs.values()]],
            strict=False,
        )
    )
    with torch.no_grad():
        expected = _first(_call(module, inputs)).numpy()
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_torch_compile(name: str) -> None:
    _, inputs, compiled = _compiled(name)
    module = copy.deepcopy(compiled.module).eval()
    with torch.no_grad():
        expected = _first(_call(module, inputs))
        actual = _first(_call(torch.compile(module, backend="aot_eager"), inputs))
    torch.testing.assert_close(actual, expected)


def test_fine_tuned_module_saves_what_was_trained(tmp_path: Any) -> None:
    model, (x,), _ = _compiled("cnn")
    compiled = sparsec.compile(model, (x,), pipeline="structured-50")  # onnxruntime
    module = compiled.module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for _ in range(2):
        module(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    module.eval()
    with torch.no_grad():
        expected = module(x)
    loaded = sparsec.load(compiled.save(tmp_path / "art"))
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(loaded(x))), expected, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(compiled(x), expected, atol=1e-4, rtol=1e-4)
    assert any("rebuilt" in note for note in compiled.report.notes)


class Reshaping(nn.Module):
    """Reads a width from an int attribute: the graph's view is rewritten, this is not."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 32
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)).reshape(-1, self.width))


def test_unupdatable_attribute_is_named_and_graph_module_is_the_fallback() -> None:
    torch.manual_seed(0)
    compiled = sparsec.compile(
        Reshaping(), (torch.randn(4, 8),), backend="torch", pipeline="structured-50"
    )
    with pytest.raises(MaterializeError, match=r"the root module \(Reshaping\)\.width = 32"):
        compiled.to_module()
    assert isinstance(compiled.module, torch.fx.GraphModule)
    assert any("graph module" in n and "width" in n for n in compiled.report.notes)


def test_a_registered_updater_makes_it_materialize() -> None:
    class Registered(Reshaping):
        pass

    @register_updater(Registered)
    def _update(module: Registered, facts: Any) -> None:
        module.width = module.fc1.out_features

    torch.manual_seed(0)
    x = torch.randn(4, 8)
    compiled = sparsec.compile(Registered(), (x,), backend="torch", pipeline="structured-50")
    module = compiled.to_module()
    assert module.width == module.fc1.out_features < 32
    with torch.no_grad():
        torch.testing.assert_close(module(x), compiled.graph.module(x))


def test_an_updater_that_fails_leaves_the_graph_module_with_the_reason() -> None:
    class Fused(Reshaping):  # an updater written for another layout of the class
        pass

    @register_updater(Fused)
    def _update(module: Fused, facts: Any) -> None:
        module.width = module.q_proj.out_features

    torch.manual_seed(0)
    x = torch.randn(4, 8)
    compiled = sparsec.compile(Fused(), (x,), backend="torch", pipeline="structured-50")
    with pytest.raises(MaterializeError, match=r"updating the model \(Fused\) failed: AttributeError"):
        compiled.to_module()
    assert isinstance(compiled.module, torch.fx.GraphModule)
    with torch.no_grad():
        assert compiled(x).shape == (4, 4)


def test_lowered_sparse_layers_fall_back_with_the_reason() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    compiled = sparsec.compile(
        model,
        (torch.randn(4, 64),),
        backend="torch",
        pipeline="sparsify{pattern=unstructured,sparsity=0.9},lower-sparse-weights{gate=off}",
    )
    with pytest.raises(MaterializeError, match="lower-sparse-weights"):
        compiled.to_module()
