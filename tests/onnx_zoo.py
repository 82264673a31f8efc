"""ONNX models for the front-end tests, made here without downloads.

Rules:
- `export(name, exporter)` writes the test zoo's model with torch.onnx's dynamo exporter
  ("dynamo") or its TorchScript one ("torchscript"), with the batch (and the sequence of
  integer inputs) as named dynamic axes, as users export them;
- `mlp_gemm()` and `conv_shape_reshape()` are graphs written by hand with `onnx.helper`:
  Gemm layers, and a Reshape whose target is computed by Shape → Gather → Concat;
- `block_sparse_bert()` is the zoo's BERT with 75% of 16×1 weight blocks zeroed;
- `bert_ort_fused()` is a BERT after ONNX Runtime's transformer optimizer (com.microsoft
  Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from zoo import ZOO

# exports that fail in torch.onnx itself, before sparsec sees a file
EXPORTER_FAILS = {
    ("gpt2", "torchscript"): "aten::diff has no TorchScript ONNX symbolic",
    ("llama-gqa", "torchscript"): "aten::diff has no TorchScript ONNX symbolic",
    ("qwen2-gqa", "torchscript"): "aten::diff has no TorchScript ONNX symbolic",
    ("t5-encoder", "dynamo"): "the dynamo exporter cannot decompose T5's attention view",
}


def _axes(tensor: torch.Tensor) -> dict[int, str]:
    sequence = not tensor.dtype.is_floating_point and tensor.dim() >= 2
    return {0: "batch", 1: "sequence"} if sequence else {0: "batch"}


def export(name: str, exporter: str, directory: Path) -> Path:
    """The zoo model `name` as an ONNX file written by `exporter`."""
    model, inputs = ZOO[name].build()
    named = dict(inputs) if isinstance(inputs, dict) else {f"input_{i}": t for i, t in enumerate(inputs)}
    path = directory / f"{name}-{exporter}.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=32)
            dims = {k: {a: batch if n == "batch" else sequence for a, n in _axes(t).items()} for k, t in named.items()}
            kwargs = isinstance(inputs, dict)
            program = torch.onnx.export(
                model, () if kwargs else tuple(named.values()), kwargs=named if kwargs else None,
                dynamo=True, input_names=list(named), verbose=False,
                dynamic_shapes=dims if kwargs else tuple(dims.values()),
            )
            assert program is not None
            program.save(path)
        else:
            buffer = io.BytesIO()
            args: tuple[Any, ...] = (named,) if isinstance(inputs, dict) else tuple(named.values())
            torch.onnx.export(
                model, args, buffer, dynamo=False,
                input_names=list(named), output_names=["output"], opset_version=17,
                dynamic_axes={k: _axes(t) for k, t in named.items()},
            )
            path.write_bytes(buffer.getvalue())
    return path


def block_sparse_bert(directory: Path, sparsity: float = 0.75) -> Path:
    """The zoo's BERT with 16×1 blocks zeroed in every hidden linear, exported (dynamo):
    a model someone else made block-sparse, for the TVM kernels."""
    model, inputs = ZOO["bert"].build()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "classifier" not in name:
                rows, cols = module.weight.shape
                blocks = torch.rand(rows // 16, cols, generator=generator)
                keep = blocks >= torch.quantile(blocks.flatten(), sparsity)
                module.weight.mul_(keep.repeat_interleave(16, dim=0))
    path = directory / "bert-block-sparse.onnx"
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (), kwargs=inputs, dynamo=True, input_names=list(inputs), verbose=False,
            dynamic_shapes={k: {0: batch, 1: sequence} for k in inputs},
        )
    assert program is not None
    program.save(path)
    return path


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array.astype(np.float32) if array.dtype.kind == "f" else array, name)


def mlp_gemm(directory: Path) -> Path:
    """x[batch, 32] → Gemm 64 → Relu → Gemm(transB) 64 → Relu → Gemm 10."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "fc2.weight", "fc2.bias"], ["h2"], name="fc2"),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "fc3.weight", "fc3.bias"], ["logits"], name="fc3", transB=1, alpha=0.5),
    ]
    inits = [
        _init("fc1.weight", rng.standard_normal((64, 32)) * 0.2), _init("fc1.bias", rng.standard_normal(64) * 0.1),
        _init("fc2.weight", rng.standard_normal((64, 64)) * 0.2), _init("fc2.bias", rng.standard_normal(64) * 0.1),
        _init("fc3.weight", rng.standard_normal((10, 64)) * 0.2), _init("fc3.bias", rng.standard_normal(10) * 0.1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), directory / "mlp.onnx")


def conv_shape_reshape(directory: Path) -> Path:
    """Conv → BN → Relu → Conv → Relu → Reshape([Shape(x)[0], -1]) → MatMul + Add."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["image", "c1.weight", "c1.bias"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.weight", "bn.bias", "bn.mean", "bn.var"], ["b1"], name="bn"),
        helper.make_node("Relu", ["b1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "c2.weight", "c2.bias"], ["c2"], name="c2", strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Shape", ["r2"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="take_batch", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["r2", "target"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "head.w"], ["mm"], name="head_matmul"),
        helper.make_node("Add", ["mm", "head.bias"], ["scores"], name="head_add"),
    ]
    inits = [
        _init("c1.weight", rng.standard_normal((8, 3, 3, 3)) * 0.3), _init("c1.bias", rng.standard_normal(8) * 0.1),
        _init("bn.weight", rng.uniform(0.5, 1.5, 8)), _init("bn.bias", rng.standard_normal(8) * 0.1),
        _init("bn.mean", rng.standard_normal(8) * 0.1), _init("bn.var", rng.uniform(0.5, 1.5, 8)),
        _init("c2.weight", rng.standard_normal((16, 8, 3, 3)) * 0.2), _init("c2.bias", rng.standard_normal(16) * 0.1),
        _init("head.w", rng.standard_normal((16 * 4 * 4, 5)) * 0.05), _init("head.bias", rng.standard_normal(5) * 0.1),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes0"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
    ]
    graph = helper.make_graph(
        nodes, "conv_shape",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), directory / "conv_shape.onnx")


def bert_ort_fused(directory: Path) -> Path:
    """A 2-layer BERT (eager attention, TorchScript export) after ORT's transformer optimizer."""
    import transformers
    from onnxruntime.transformers.optimizer import optimize_model

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        vocab_size=100, max_position_embeddings=32, num_labels=3, attn_implementation="eager",
    )
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 100, (2, 8))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    plain = directory / "bert-plain.onnx"
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), buffer, dynamo=False,
            input_names=names, output_names=["logits"], opset_version=17,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        )
        plain.write_bytes(buffer.getvalue())
        optimized = optimize_model(str(plain), model_type="bert", num_heads=4, hidden_size=64)
    path = directory / "bert-ort-fused.onnx"
    optimized.save_model_to_file(str(path))
    return path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
