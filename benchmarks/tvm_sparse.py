"""Block-sparse linear kernels (TVM, ours) vs dense ORT and torch at BERT-base FFN shapes.

Prints a table of median times and writes JSON: for each shape, sparsity, block shape and
thread count, TVM sparse, ORT dense and torch dense, speedup over the fastest dense, and
the ideal 1/(1-s). Run pinned and quiet: `taskset -c 0,1 python benchmarks/tvm_sparse.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper

from sparsec.backends.tvm.kernels import BsrShape, bsr_kernel, choose_schedule
from sparsec.backends.tvm.target import host_target, vector_lanes
from sparsec.backends.tvm.threads import set_threads

SHAPES = [(128, 768, 3072), (128, 3072, 768)]  # (tokens, in, out)
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
BLOCKS = [(1, 1), (4, 1), (8, 1), (16, 1), (1, 4)]


def _median_ms(run, repeats: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _bsr(out_f: int, in_f: int, r: int, c: int, sparsity: float, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    keep = rng.random((out_f // r, in_f // c)) >= sparsity
    crow = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    cols = np.nonzero(keep)[1].astype(np.int64)
    return rng.standard_normal((len(cols), r, c)).astype(np.float32), cols, crow


def _ort_dense(x: np.ndarray, weight: np.ndarray, threads: int) -> float:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(
            helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 18)]),
            path,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return _median_ms(lambda: session.run(None, {"x": x}), 30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=SPARSITIES)
    parser.add_argument("--shapes", type=int, nargs="+", default=[0, 1], help="indices into SHAPES")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tvm_sparse.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"host {platform.node()} cpu {host_target().attrs['mcpu']} load {os.getloadavg()}")
    print(
        f"{'shape':>16} {'thr':>3} {'s':>5} {'block':>5} {'tvm ms':>8} {'ort ms':>8} "
        f"{'torch ms':>8} {'speedup':>7} {'ideal':>5}"
    )
    for shape_index in args.shapes:
        tokens, in_f, out_f = SHAPES[shape_index]
        x = rng.standard_normal((tokens, in_f)).astype(np.float32)
        weight = rng.standard_normal((out_f, in_f)).astype(np.float32)
        for threads in args.threads:
            target = host_target(threads)
            lanes = vector_lanes(target)
            set_threads(threads)
            torch.set_num_threads(threads)
            x_t, w_t = torch.from_numpy(x), torch.from_numpy(weight)
            torch_ms = _median_ms(lambda: torch.nn.functional.linear(x_t, w_t), 30)  # noqa: B023
            ort_ms = _ort_dense(x, weight, threads)
            best_dense = min(torch_ms, ort_ms)
            for sparsity in args.sparsities:
                for r, c in BLOCKS:
                    shape = BsrShape(out_f, in_f, r, c)
                    func = bsr_kernel(shape, choose_schedule(shape, lanes), lanes)
                    library = tvm.compile(
                        tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=target
                    )
                    values, cols, crow = _bsr(out_f, in_f, r, c, sparsity, rng)
                    tensors = [
                        tvm.runtime.tensor(a)
                        for a in (
                            x,
                            values,
                            cols,
                            crow,
                            np.zeros(out_f, np.float32),
                            np.zeros((tokens, out_f), np.float32),
                        )
                    ]
                    kernel = library["k"]
                    tvm_ms = _median_ms(lambda: kernel(*tensors), 30)  # noqa: B023
                    row = {
                        "tokens": tokens,
                        "in": in_f,
                        "out": out_f,
                        "threads": threads,
                        "sparsity": sparsity,
                        "block": f"{r}x{c}",
                        "schedule": choose_schedule(shape, lanes).value,
                        "tvm_sparse_ms": tvm_ms,
                        "ort_dense_ms": ort_ms,
                        "torch_dense_ms": torch_ms,
                        "speedup": best_dense / tvm_ms,
                        "ideal": 1 / (1 - sparsity),
                    }
                    rows.append(row)
                    print(
                        f"{tokens}x{in_f}->{out_f:>5} {threads:>3} {sparsity:>5.2f} {r}x{c:<3} "
                        f"{tvm_ms:8.3f} {ort_ms:8.3f} {torch_ms:8.3f} {row['speedup']:7.2f} "
                        f"{row['ideal']:5.1f}",
                        flush=True,
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "mcpu": str(host_target().attrs["mcpu"]),
                "load": os.getloadavg(),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
