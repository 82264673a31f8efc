"""The "tvm" cost model: the break-even gate measures our TVM kernels, not torch's.

Why: a layer lowered to a sparse op runs, in a TVM build, as our TIR kernel; torch's
reference CSR/BSR kernels (the "reference" model) are slower than dense up to ~95%
sparsity here, while ours beat the fastest dense at 70–90% for r×1 blocks and at 90% for
unstructured (benchmarks/tvm_sparse.py). Gating a TVM build with the reference model
keeps layers dense that TVM runs faster sparse.

Rules:
- `sparse_ms`: the kernel `kernel_for` picks for this host's CPU and (out, in, r, c) (N:M is
  CSR with n/m of each row, 1×1), called as a partitioned build calls it, on random
  weights of the pattern; kernels are compiled once per shape and cached;
- `dense_ms`: the faster of torch's dense linear and ONNX Runtime's Gemm on the same shape
  (the dense work a TVM build would otherwise leave to torch, or a dense ORT build runs);
- both are the fastest of `repeats` runs with `threads` threads (default 1: on a shared
  machine the minimum is the stable estimate, and the ratio is what decides), kept in a
  `GateCache` keyed by this host's CPU, its ISA and a digest of the kernel generator's
  source, so a rebuild reads the same figures and a changed kernel is measured again;
- decision rule (`sparsec.latency_model.decide`): keep the sparse format when
  `dense_ms / sparse_ms >= min_speedup` of `lower-sparse-weights`.

Example:
    import sparsec.backends.tvm   # registers "tvm"
    pipeline("sparsify{pattern=block,block=[16,1],sparsity=0.7},"
             "lower-sparse-weights{cost_model=tvm,min_speedup=1.2}")
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tvm

from sparsec.latency_model import (
    MeasuredLatencyModel,
    ReferenceLatencyModel,
    fastest_ms,
)
from sparsec.ops.sparse_formats import SparseFormat

from .importer import kernel_for
from .isa import isa_of
from .kernels import BsrShape, compile_config
from .partitioned import _SparseLinear
from .sparse_calls import SparseCall
from .target import host_target
from .threads import set_threads

__all__ = ["TvmLatencyModel"]


def _ort_gemm(weight: np.ndarray, threads: int) -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", weight.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dense.onnx")
        onnx.save(model, path)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@dataclass
class TvmLatencyModel(MeasuredLatencyModel):
    """Measures our TVM kernels against torch and ORT dense on this machine (cached)."""

    _kernels: dict[BsrShape, Any] = field(default_factory=dict)

    def cache_name(self) -> str:
        target = host_target(self.threads)
        return (
            f"tvm-{target.attrs['mcpu']}-{isa_of(target).name}-tvm{tvm.__version__}-"
            f"ort{_ort_version()}-{_kernel_source_digest()}"
        )

    def measure_dense(self, x: torch.Tensor, w: torch.Tensor) -> float:
        (out_features, in_features), tokens = w.shape, x.shape[0]
        reference = ReferenceLatencyModel(self.repeats, self.threads, self.seed)
        torch_ms = reference.dense_ms(out_features, in_features, tokens)
        session = _ort_gemm(w.numpy(), self.threads)
        feed = {"x": x.numpy()}
        ort_ms = fastest_ms(lambda: session.run(None, feed), self.repeats, self.threads)
        return min(torch_ms, ort_ms)

    def measure_sparse(self, sparse: SparseFormat, args: tuple[Any, ...]) -> float:
        call = SparseCall.of_args(sparse, args)
        operands: tuple[Any, ...] = (args[0], *args[1 : 1 + len(sparse.parts)], None)
        linear = _SparseLinear(self._kernel(call.shape), call, host_target(self.threads))
        set_threads(self.threads)
        return fastest_ms(lambda: linear(*operands), self.repeats, self.threads)

    def _kernel(self, shape: BsrShape) -> Any:
        if shape not in self._kernels:
            target = host_target(self.threads)
            name, func = kernel_for(shape, target)
            with tvm.transform.PassContext(config=compile_config()):
                library = tvm.compile(
                    tvm.IRModule({name: func.with_attr("global_symbol", name)}), target=target
                )
            self._kernels[shape] = library[name]
        return self._kernels[shape]


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _kernel_source_digest() -> str:
    """A digest of the modules whose code decides a kernel's speed (a change re-measures)."""
    import hashlib

    from . import isa, kernels, partitioned, slabs

    digest = hashlib.sha256()
    for module in (isa, kernels, partitioned, slabs):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:12]
