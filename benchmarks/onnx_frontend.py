"""sparsec vs onnxsim 0.8.1 on the same ONNX files: coverage, size, ORT latency, fidelity.

Rules:
- the files are made here, without downloads, with random weights: a BERT classifier (hidden 256,
  4 layers, 4 heads, FFN 1024) from torch.onnx's dynamo exporter, the same BERT through the
  TorchScript exporter and ONNX Runtime's transformer optimizer (fused Attention,
  SkipLayerNormalization, BiasGelu), a LLaMA with grouped-query attention (hidden 256,
  4 layers, 8 heads, 2 KV heads) from the dynamo exporter, and a ResNet-style CNN (32×32
  input) from the TorchScript exporter;
- sparsec: `sparsec.compile(file, pipeline="structured-50")`, its ONNX Runtime artifact;
  onnxsim: `apply_attention_head_pruning` then `apply_structured_pruning` at sparsity 0.5
  ("onnxsim"), and `apply_structured_pruning` alone ("onnxsim-structured"), each in
  onnxsim's own interpreter (`_onnxsim_peer`);
- coverage: the tool returned a model, it has fewer parameters, it runs in plain
  onnxruntime, and its inputs and outputs (names, order, named dynamic axes) are the
  original's;
- parameters: initializer elements after / before;
- latency: each file timed in its own fresh process (`_isolation`), ORT with `--threads`
  intra-op threads, batch 1 and 8, sequence 64 for token inputs, median of `--repeats`
  runs after warm-up; speedup = dense median / pruned median;
- fidelity: relative L2 distance of the outputs from the dense model's on the same inputs
  (random weights: this says how much each tool changed the function, not task quality);
- prints a table with the machine and writes benchmarks/results/onnx_frontend.json.

Example:
    taskset -c 0,1 python benchmarks/onnx_frontend.py --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import _onnxsim_peer  # noqa: E402
from _isolation import add_onnx_child_option, machine, machine_line, onnx_child, onnx_median_ms  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "onnx_frontend.json"
SEQUENCE = 64
VOCAB = 1000
RATIO = 0.5


# --- the ONNX files --------------------------------------------------------------------------


def _bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        vocab_size=VOCAB, max_position_embeddings=128, num_labels=2, attn_implementation="eager",
    )
    ids = torch.randint(0, VOCAB, (2, 16))
    return transformers.BertForSequenceClassification(config).eval(), {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
    }


def _llama() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=768, vocab_size=VOCAB, max_position_embeddings=128, use_cache=False,
    )
    return transformers.LlamaForCausalLM(config).eval(), {"input_ids": torch.randint(0, VOCAB, (2, 16))}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def _resnet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        _Block(64, 64, 1), _Block(64, 128, 2), _Block(128, 256, 2), _Block(256, 256, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10),
    )
    for module in model.modules():  # trained-looking BN statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval(), {"pixels": torch.randn(2, 3, 32, 32)}


def _export(model: nn.Module, inputs: dict[str, torch.Tensor], path: Path, dynamo: bool) -> None:
    names = list(inputs)
    axes = {n: {0: "batch", 1: "sequence"} if not t.dtype.is_floating_point else {0: "batch"} for n, t in inputs.items()}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=128)
            shapes = {n: {a: batch if d == "batch" else sequence for a, d in axes[n].items()} for n in names}
            program = torch.onnx.export(model, (), kwargs=inputs, dynamo=True, input_names=names,
                                        dynamic_shapes=shapes, verbose=False)
            assert program is not None
            program.save(path)
        else:
            buffer = io.BytesIO()
            # positional, in forward()'s order (the inputs are its leading parameters)
            torch.onnx.export(model, tuple(inputs.values()), buffer,
                              dynamo=False, input_names=names, opset_version=17, dynamic_axes=axes)
            path.write_bytes(buffer.getvalue())


def make_files(directory: Path) -> dict[str, Path]:
    from onnxruntime.transformers.optimizer import optimize_model

    files = {}
    bert, inputs = _bert()
    files["bert-dynamo"] = directory / "bert-dynamo.onnx"
    _export(bert, inputs, files["bert-dynamo"], dynamo=True)
    plain = directory / "bert-torchscript.onnx"
    _export(bert, inputs, plain, dynamo=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimize_model(str(plain), model_type="bert", num_heads=4, hidden_size=256)
    files["bert-ort-fused"] = directory / "bert-ort-fused.onnx"
    fused.save_model_to_file(str(files["bert-ort-fused"]))
    llama, inputs = _llama()
    files["llama-gqa-dynamo"] = directory / "llama-gqa-dynamo.onnx"
    _export(llama, inputs, files["llama-gqa-dynamo"], dynamo=True)
    resnet, inputs = _resnet()
    files["resnet-torchscript"] = directory / "resnet-torchscript.onnx"
    _export(resnet, inputs, files["resnet-torchscript"], dynamo=False)
    return files


# --- measurements ----------------------------------------------------------------------------


def feed(path: Path, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for the file's declared inputs: batch and sequence set, ids below VOCAB."""
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(seed)
    arrays = {}
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        dims = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            dims.append(dim.dim_value if dim.HasField("dim_value") else batch if axis == 0 else SEQUENCE)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            arrays[value.name] = rng.standard_normal(dims).astype(dtype)
        elif "mask" in value.name:
            arrays[value.name] = np.ones(dims, dtype)
        elif "type" in value.name:
            arrays[value.name] = np.zeros(dims, dtype)
        else:
            arrays[value.name] = rng.integers(0, VOCAB, dims).astype(dtype)
    return arrays


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def params(path: Path) -> int:
    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def interface(path: Path) -> tuple[list[Any], list[Any]]:
    """Inputs and outputs: names, order, and which axes are dynamic under which name."""
    model = onnx.load(str(path), load_external_data=False)

    def named_axes(value: onnx.ValueInfoProto) -> list[Any]:
        return [d.dim_param if d.dim_param else "static" for d in value.type.tensor_type.shape.dim]

    return [(v.name, named_axes(v)) for v in model.graph.input], [(v.name, named_axes(v)) for v in model.graph.output]


def fidelity(dense: Path, pruned: Path) -> float:
    inputs = feed(dense, 4, seed=1)
    expected = _session(dense, 1).run(None, inputs)[0]
    actual = _session(pruned, 1).run(None, inputs)[0]
    return float(np.linalg.norm(actual - expected) / (np.linalg.norm(expected) + 1e-12))


def run_sparsec(path: Path, out: Path) -> dict[str, Any]:
    import sparsec

    start = time.perf_counter()
    try:
        compiled = sparsec.compile(path, pipeline="structured-50")
        artifact = compiled.save(out)
    except Exception as exc:  # a failure is a coverage result, not a crash of the benchmark
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {
        "ok": compiled.report.backend == "onnxruntime",
        "error": None if compiled.report.backend == "onnxruntime" else compiled.report.backend_reason,
        "file": str(artifact / "model.onnx"), "seconds": round(time.perf_counter() - start, 1),
    }


def run_onnxsim(path: Path, out: Path, heads: bool = True) -> dict[str, Any]:
    start = time.perf_counter()
    result = _onnxsim_peer.prune(path, out, RATIO, heads=heads)
    result["file"] = str(out)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def measure(name: str, path: Path, tool: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Coverage, size, fidelity and latency of one tool's output for one file."""
    row: dict[str, Any] = {"model": name, **{k: tool.get(k) for k in ("ok", "error", "api", "seconds")}}
    if not tool.get("ok"):
        return row
    pruned = Path(tool["file"])
    row["params_ratio"] = params(pruned) / params(path)
    row["interface_kept"] = interface(pruned) == interface(path)
    try:
        row["fidelity_rel_l2"] = fidelity(path, pruned)
        row["runs"] = True
    except Exception as exc:  # the pruned file does not run in onnxruntime
        row.update(runs=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        return row
    for batch in args.batches:
        row[f"b{batch}_ms"] = onnx_median_ms(Path(__file__), pruned, batch, args.threads, args.repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_onnx_child_option(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.child:
        onnx_child(args.child, lambda path, batch: feed(Path(path), batch))
        return
    host = machine()
    print(machine_line(host))
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsec-onnx-bench-") as tmp:
        directory = Path(tmp)
        files = make_files(directory)
        for name, path in files.items():
            dense = measure(name, path, {"ok": True, "file": str(path)}, args)
            dense["tool"] = "dense"
            rows.append(dense)
            for tool in ("sparsec", "onnxsim", "onnxsim-structured"):
                out = directory / f"{name}-{tool}"
                if tool == "sparsec":
                    made = run_sparsec(path, out)
                else:
                    made = run_onnxsim(path, out.with_suffix(".onnx"), heads=tool == "onnxsim")
                row = measure(name, path, made, args)
                row["tool"] = tool
                for batch in args.batches:
                    if f"b{batch}_ms" in row:
                        row[f"b{batch}_speedup"] = dense[f"b{batch}_ms"] / row[f"b{batch}_ms"]
                rows.append(row)
                print(json.dumps(row))
    _table(rows, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(
        {"machine": host, "load_after": machine()["load"], "threads": args.threads, "sequence": SEQUENCE,
         "ratio": RATIO, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    head = "| model | tool | pruned, runs, interface kept | params | fidelity (rel. L2) | " + " | ".join(
        f"batch {b} ms (speedup)" for b in args.batches) + " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        if row["tool"] == "dense":
            cells = ["dense", "-", "1.00", "0", *[f"{row[f'b{b}_ms']:.2f}" for b in args.batches]]
        elif not row.get("ok") or not row.get("runs"):
            cells = [row["tool"], f"no: {str(row.get('error'))[:80]}", "-", "-", *["-" for _ in args.batches]]
        else:
            shrunk = row["params_ratio"] < 1.0
            kept = "yes" if row["interface_kept"] else "no (interface changed)"
            cells = [
                row["tool"], f"{'yes' if shrunk else 'no (nothing pruned)'}, yes, {kept}",
                f"{row['params_ratio']:.2f}", f"{row['fidelity_rel_l2']:.3f}",
                *[f"{row[f'b{b}_ms']:.2f} ({row[f'b{b}_speedup']:.2f}×)" for b in args.batches],
            ]
        print(f"| {row['model']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
