"""The ONNX front end: ONNX files in, the same IR, pruned ONNX out with the same interface.

Checks, on files exported by both torch exporters, written by hand and fused by ONNX
Runtime's transformer optimizer:
- the dense import equals ONNX Runtime on the original file (relative 1e-5) before any pass;
- `structured-50` prunes, runs, keeps the input/output names, order and dynamic axes, and
  the artifact's ONNX Runtime output equals the pruned IR's (relative 1e-4), at a batch
  size other than the example's;
- block sparsity from an ONNX input lowers to the TVM kernels;
- bad files are named errors and nothing is written.

SPARSEC_ONNX_ZOO=full checks the dense import of every zoo model from both exporters and
prunes every dynamo export (`make onnx-zoo`); by default a model of each kind is checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx_zoo import (
    EXPORTER_FAILS,
    bert_ort_fused,
    block_sparse_bert,
    conv_shape_reshape,
    export,
    mlp_gemm,
)
from torch.utils import _pytree as pytree
from zoo import ZOO, hf_available

import sparsec
from sparsec.errors import OnnxImportError
from sparsec.frontends.onnx import OnnxProgram, import_onnx

DENSE_RTOL = 1e-5
PRUNED_RTOL = 1e-4

# one member of each family by default (CI time); SPARSEC_ONNX_ZOO=full runs the whole test
# zoo through both exporters
_FULL = os.environ.get("SPARSEC_ONNX_ZOO") == "full"
_DYNAMO = list(ZOO) if _FULL else ["bert", "llama-gqa", "vit", "resnet-bottleneck", "mobilenetv2-se", "unet-groupnorm"]
_TORCHSCRIPT = list(ZOO) if _FULL else ["bert", "t5-encoder", "shufflenetv2"]
DENSE_CASES = [*[(n, "dynamo") for n in _DYNAMO], *[(n, "torchscript") for n in _TORCHSCRIPT]]
PRUNE_CASES = [
    "bert/dynamo", "resnet-bottleneck/torchscript", "mlp", "conv-shape", "bert-ort-fused",
    *([f"{n}/dynamo" for n in ZOO if n != "bert" and (n, "dynamo") not in EXPORTER_FAILS] if _FULL else []),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ONNX files by case name, made on first use."""
    return {}


def _file(files: dict[str, Path], case: str, directory: Path) -> Path:
    if case not in files:
        if case == "mlp":
            files[case] = mlp_gemm(directory)
        elif case == "conv-shape":
            files[case] = conv_shape_reshape(directory)
        elif case == "bert-ort-fused":
            pytest.importorskip("transformers")
            files[case] = bert_ort_fused(directory)
        else:
            name, exporter = case.split("/")
            needs = ZOO[name].needs
            if needs and not hf_available(needs):
                pytest.skip(f"transformers has no {needs}")
            if (name, exporter) in EXPORTER_FAILS:
                pytest.skip(f"torch.onnx cannot export it: {EXPORTER_FAILS[name, exporter]}")
            files[case] = export(name, exporter, directory)
    return files[case]


def _ort(path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {value.name: tensor.numpy() for value, tensor in zip(session.get_inputs(), inputs, strict=True)}
    return session.run(None, feed)


def _relative(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(e - a)) / (np.max(np.abs(e)) + 1e-12)) for e, a in zip(expected, actual, strict=True)
    )


def _leaves(out: Any) -> list[np.ndarray]:
    return [t.detach().numpy() for t in pytree.tree_leaves(out)]


def _interface(path: Path) -> tuple[list[Any], list[Any]]:
    model = onnx.load(str(path), load_external_data=False)

    def dims(value: onnx.ValueInfoProto) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return [(v.name, dims(v)) for v in model.graph.input], [(v.name, dims(v)) for v in model.graph.output]


@pytest.mark.parametrize("name,exporter", DENSE_CASES, ids=[f"{n}/{e}" for n, e in DENSE_CASES])
def test_the_dense_import_equals_onnxruntime_on_the_original(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, name: str, exporter: str
) -> None:
    path = _file(files, f"{name}/{exporter}", tmp_path_factory.mktemp("zoo"))
    graph = import_onnx(path)
    with torch.no_grad():
        ours = _leaves(graph.module(*graph.example_args))
    assert _relative(_ort(path, graph.example_args), ours) <= DENSE_RTOL
    original = onnx.load(str(path))
    assert [s.name for s in graph.input_specs] == [v.name for v in original.graph.input]
    assert list(graph.output_names) == [v.name for v in original.graph.output]


@pytest.fixture(scope="module", params=PRUNE_CASES)
def pruned(request: pytest.FixtureRequest, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Path]:
    path = _file(files, request.param, tmp_path_factory.mktemp("zoo"))
    compiled = sparsec.compile(path, pipeline="structured-50")
    artifact = compiled.save(tmp_path_factory.mktemp("artifact") / "model")
    return path, compiled, artifact


def test_structured_50_prunes_and_keeps_the_interface(pruned: tuple[Path, Any, Path]) -> None:
    path, compiled, artifact = pruned
    assert compiled.report.backend == "onnxruntime", compiled.report.backend_reason
    assert compiled.report.after.parameters < compiled.report.before.parameters
    original_inputs, original_outputs = _interface(path)
    inputs, outputs = _interface(artifact / "model.onnx")
    assert [name for name, _ in inputs] == [name for name, _ in original_inputs]
    assert [name for name, _ in outputs] == [name for name, _ in original_outputs]
    for (_, before), (_, after) in zip([*original_inputs, *original_outputs], [*inputs, *outputs], strict=True):
        assert [isinstance(d, str) for d in before] == [isinstance(d, str) for d in after]
        assert [d for d in before if isinstance(d, str)] == [d for d in after if isinstance(d, str)]


def test_the_artifact_runs_in_plain_onnxruntime_like_the_pruned_ir(pruned: tuple[Path, Any, Path]) -> None:
    path, compiled, artifact = pruned
    program = OnnxProgram(path)
    # a batch of 3: the example had 2, so this also checks the batch stayed dynamic
    inputs = tuple(torch.cat([t, t[:1]]) for t in program.example_inputs())
    with torch.no_grad():
        expected = _leaves(compiled.graph.module(*inputs))
    assert _relative(expected, _ort(artifact / "model.onnx", inputs)) <= PRUNED_RTOL
    assert _relative(expected, _leaves(sparsec.load(artifact)(*inputs))) <= PRUNED_RTOL


def test_layers_keep_the_names_the_exporter_recorded(files: dict[str, Path], tmp_path: Path) -> None:
    graph = import_onnx(_file(files, "bert/dynamo", tmp_path))
    names = set(graph.module.state_dict())
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert "bert.encoder.layer.1.output.dense.bias" in names


def test_fused_attention_prunes_heads(pruned: tuple[Path, Any, Path]) -> None:
    path, compiled, _ = pruned
    if path.stem != "bert-ort-fused":
        pytest.skip("the fused-attention case only")
    widths = {w.layer: w.out_channels for w in compiled.report.after.widths}
    query = [out for layer, out in widths.items() if layer.endswith(".query")]
    assert query and all(out < 64 for out in query)


def test_a_block_sparse_onnx_bert_runs_on_the_tvm_kernels_like_onnxruntime(tmp_path: Path) -> None:
    """Blocks already zero in the file: sparsify finds exactly them (outputs unchanged), the
    linears lower to sparsec's BSR kernels, and TVM matches ORT on the original file."""
    pytest.importorskip("tvm")
    pytest.importorskip("transformers")
    from sparsec.backends.tvm.partitioned import sparse_nodes

    path = block_sparse_bert(tmp_path)
    compiled = sparsec.compile(
        path, pipeline="sparsify{pattern=block,block=[16,1],sparsity=0.75},lower-sparse-weights{gate=off}",
        backend="tvm",
    )
    assert compiled.report.backend == "tvm"
    assert len(sparse_nodes(compiled.graph.module)) >= 12  # q, k, v, out, up, down in 2 layers
    inputs = tuple(torch.cat([t, t[:1]]) for t in OnnxProgram(path).example_inputs())
    assert _relative(_ort(path, inputs), _leaves(compiled(*inputs))) <= PRUNED_RTOL


# --- bad input -----------------------------------------------------------------------------


def _refused(source: Any, match: str, tmp_path: Path, **kwargs: Any) -> None:
    out = tmp_path / "never"
    with pytest.raises(OnnxImportError, match=match):
        sparsec.compile(source, **kwargs).save(out)
    assert not out.exists()


def test_a_truncated_file_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(_file(files, "mlp", tmp_path).read_bytes()[:300])
    _refused(broken, "not an ONNX model", tmp_path)


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "weights.onnx"
    other.write_text("not a protobuf at all\n" * 20)
    _refused(other, "not an ONNX model", tmp_path)


def test_an_old_opset_is_refused_with_the_upgrade(files: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(_file(files, "mlp", tmp_path)))
    model.opset_import[0].version = 11
    _refused(model, "version_converter", tmp_path)


def test_missing_external_data_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(_file(files, "mlp", tmp_path)))
    target = tmp_path / "external.onnx"
    onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.onnx.data", size_threshold=0)
    (tmp_path / "external.onnx.data").unlink()
    _refused(target, "external", tmp_path)


def test_unknown_dims_without_example_inputs_are_refused(tmp_path: Path) -> None:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    _refused(model, "example_inputs", tmp_path)
    compiled = sparsec.compile(model, {"x": torch.randn(2, 3, 5, 5)}, pipeline=[])
    assert compiled(torch.randn(1, 3, 5, 5)).shape == (1, 3, 5, 5)


def test_every_unsupported_node_is_listed(files: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(_file(files, "mlp", tmp_path)))
    model.graph.node.insert(1, onnx.helper.make_node("Frobnicate", ["h1"], ["f1"], name="first", domain="acme"))
    model.graph.node.insert(2, onnx.helper.make_node("Frobnicate", ["f1"], ["f2"], name="second", domain="acme"))
    model.opset_import.append(onnx.helper.make_opsetid("acme", 1))
    with pytest.raises(OnnxImportError) as error:
        OnnxProgram(model)
    assert "'first'" in str(error.value) and "'second'" in str(error.value)


def test_a_quantized_model_is_refused_with_the_prune_then_quantize_path(
    files: dict[str, Path], tmp_path: Path
) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantized = tmp_path / "int8.onnx"
    quantize_dynamic(str(_file(files, "mlp", tmp_path)), str(quantized))
    _refused(quantized, "quantize", tmp_path)


def test_the_cli_compiles_an_onnx_file_without_inputs(files: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sparsec.cli import app

    out = tmp_path / "art"
    result = CliRunner().invoke(app, ["compile", str(_file(files, "mlp", tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [name for name, _ in _interface(out / "model.onnx")[1]] == ["logits"]


def test_an_output_named_like_an_inner_value_keeps_its_name(files: dict[str, Path], tmp_path: Path) -> None:
    """GPT-2's dynamo export names its logits `linear`, as the graph names its own linears."""
    model = onnx.load(str(_file(files, "mlp", tmp_path)))
    model.graph.node[-1].output[0] = "linear"
    model.graph.output[0].name = "linear"
    compiled = sparsec.compile(model, pipeline="structured-50")
    assert compiled.report.backend == "onnxruntime", compiled.report.backend_reason
    artifact = compiled.save(tmp_path / "art")
    assert [name for name, _ in _interface(artifact / "model.onnx")[1]] == ["linear"]
