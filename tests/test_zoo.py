"""The model zoo (tests/zoo.py) pruned end to end with `structured-50`.

Rules:
- every model compiles with the torch backend, runs at the traced batch and at batch 3,
  keeps every output shape, stays finite, and loses parameters;
- attention groups of the transformer models are not frozen: heads really are pruned
  (units after < before), and GQA models keep whole key/value groups;
- tied input/output embeddings stay one tensor after pruning;
- the groups that remain frozen are printed with their reasons (`pytest -s` shows them);
- ONNX: each pruned model lowers with the onnxruntime backend and matches torch (skipped
  where that backend cannot be imported).

Example:
    pytest -q -s tests/test_zoo.py -k llama
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any

import pytest
import torch
from torch.utils import _pytree as pytree
from zoo import ZOO, ZooEntry, hf_available

import sparsec

_BUILT: dict[str, Any] = {}


def _entries() -> list[Any]:
    params = []
    for name, entry in ZOO.items():
        marks = []
        if entry.needs and not hf_available(entry.needs):
            marks.append(pytest.mark.skip(reason=f"transformers.{entry.needs} is not available"))
        params.append(pytest.param(entry, id=name, marks=marks))
    return params


def _call(module: Any, inputs: Any) -> Any:
    with torch.no_grad():
        return module(**inputs) if isinstance(inputs, dict) else module(*inputs)


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _batch3(inputs: Any) -> Any:
    return pytree.tree_map(
        lambda t: torch.cat([t, t[:1]]) if isinstance(t, torch.Tensor) else t, inputs
    )


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _compiled(entry: ZooEntry) -> tuple[Any, Any, Any, int]:
    """Build and compile once per session (the ONNX test reuses it)."""
    if entry.name not in _BUILT:
        model, inputs = entry.build()
        reference = _call(model, inputs)
        before = _params(model)
        compiled = sparsec.compile(model, inputs, backend="torch", pipeline="structured-50")
        _BUILT[entry.name] = (compiled, inputs, reference, before)
    return _BUILT[entry.name]


def _matches(layers: str, pattern: str) -> bool:
    return any(fnmatch.fnmatch(layer.strip(), pattern) for layer in layers.split(","))


@pytest.mark.parametrize("entry", _entries())
def test_zoo_prunes_and_runs(entry: ZooEntry) -> None:
    compiled, inputs, reference, before = _compiled(entry)
    after = _params(compiled.module)
    frozen = [g for g in compiled.report.groups if g["frozen"]]
    print(f"\n{entry.name}: params {before} -> {after} ({after / before:.2f})")
    for g in frozen:
        print(f"  frozen group {g['index']} [{g['layers']}] {g['before']} units: {g['frozen']}")

    assert after < before
    for inp in (inputs, _batch3(inputs)):
        expected = [t.shape for t in _tensors(reference)]
        if inp is not inputs:
            expected = [(3, *s[1:]) for s in expected]
        outs = _tensors(_call(compiled, inp))
        assert [tuple(t.shape) for t in outs] == [tuple(s) for s in expected]
        assert all(torch.isfinite(t).all() for t in outs if t.is_floating_point())

    for pattern in entry.attention:
        rows = [g for g in compiled.report.groups if _matches(g["layers"], pattern)]
        assert rows, f"no group holds {pattern}"
        for g in rows:
            assert not g["frozen"], f"attention group {g['layers']} frozen: {g['frozen']}"
            assert g["after"] < g["before"], f"attention group {g['layers']} was not pruned"


@pytest.mark.parametrize("entry", _entries())
def test_zoo_runs_no_op_without_an_opinfo(entry: ZooEntry) -> None:
    """OpInfo coverage: every op the zoo traces to has a channel-flow rule. An op without
    one freezes the channels around it; the report lists it under unruled ops."""
    compiled = _compiled(entry)[0]
    assert compiled.report.unruled_ops == {}, (
        f"{entry.name} runs ops without an OpInfo flow rule: {compiled.report.unruled_ops}; "
        "add them (ARCHITECTURE.md, 'Add an op')"
    )


@pytest.mark.parametrize("name", ["gpt2", "qwen2-gqa"])
def test_zoo_tied_embeddings_stay_tied(name: str) -> None:
    entry = ZOO[name]
    if entry.needs and not hf_available(entry.needs):
        pytest.skip(f"transformers.{entry.needs} is not available")
    model, _ = entry.build()
    tied = {id(p) for p in model.parameters()}
    assert len(tied) < len(dict(model.named_parameters(remove_duplicate=False)))  # tied to start
    compiled, _, _, _ = _compiled(entry)
    graph = compiled.graph
    embed = next(
        t for t in ("transformer.wte.weight", "model.embed_tokens.weight") if _has(graph, t)
    )
    assert graph.tensor("lm_head.weight") is graph.tensor(embed)
    assert graph.tensor(embed).shape[1] < model.config.hidden_size


def _has(graph: Any, target: str) -> bool:
    try:
        graph.tensor(target)
    except Exception:  # the graph names it under its other alias only
        return False
    return True


def _onnx_backend_ok() -> bool:
    try:
        importlib.import_module("sparsec.backends.onnxruntime")
    except Exception:
        return False
    return True


@pytest.mark.skipif(
    not _onnx_backend_ok(), reason="sparsec.backends.onnxruntime cannot be imported"
)
@pytest.mark.parametrize("entry", _entries())
def test_zoo_onnx_matches_torch(entry: ZooEntry) -> None:
    if entry.onnx_broken:
        pytest.xfail(entry.onnx_broken)
    compiled, inputs, _, _ = _compiled(entry)
    expected = _tensors(_call(compiled, inputs))
    model, _ = entry.build()
    onnx = sparsec.compile(model, inputs, backend="onnxruntime", pipeline="structured-50")
    got = _tensors(_call(onnx, inputs))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        scale = max(float(e.abs().max()), 1.0)
        torch.testing.assert_close(g.float(), e.float(), atol=1e-4 * scale, rtol=0)
