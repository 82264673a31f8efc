"""Block-sparse TVM kernels (ours) vs dense ORT, torch and tuned TVM at BERT-base FFN shapes.

The dense baselines (ORT, torch) are timed in a fresh process per shape and thread count
(`_isolation`), ORT again in this process after the kernels as a control row; `--isa`
builds the kernels for another ISA (x86-64-v3 / -v4 code), which runs only where the host
has it. Prints a table of median times and writes JSON: for each shape, sparsity, block shape and
thread count, TVM sparse (the kernel call, the transpose of x into its panel included), ORT
dense, torch dense and TVM dense tuned by meta-schedule (`--tune-trials` candidates per
shape and thread count, the Relax VM call timed; records persist in `--tuning-dir`, so a
rerun reuses them and tunes nothing), speedup over the fastest dense, and the ideal
1/(1-s); then the best block shape per (shape, threads, sparsity). The load average is
printed before and after: on a shared machine compare only numbers taken in the same run.
Run pinned: `taskset -c 0,1 python benchmarks/tvm_sparse.py` (first run: ~2 min of tuning
per shape and thread count at 64 trials; `--tune-trials 0` leaves the tuned column out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper

from sparsec.backends.tvm.importer import import_graph
from sparsec.backends.tvm.isa import ISAS, isa_of, isa_target, missing_here
from sparsec.backends.tvm.kernels import (
    BsrShape,
    Schedule,
    bsr_kernel,
    choose_schedule,
    compile_config,
)
from sparsec.backends.tvm.relax_executable import compile_module
from sparsec.backends.tvm.slabs import slab_major
from sparsec.backends.tvm.target import host_target
from sparsec.backends.tvm.threads import set_threads
from sparsec.backends.tvm.tuning import DEFAULT_TUNING_DIR, TuneBudget, tune_module

sys.path.insert(0, str(Path(__file__).parent))
from _isolation import emit, in_fresh_process, machine, machine_line, median_ms  # noqa: E402

SHAPES = [(128, 768, 3072), (128, 3072, 768)]  # (tokens, in, out)
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
BLOCKS = [(1, 1), (4, 1), (8, 1), (16, 1), (1, 4)]


def _bsr(out_f: int, in_f: int, r: int, c: int, sparsity: float, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    keep = rng.random((out_f // r, in_f // c)) >= sparsity
    crow = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
    cols = np.nonzero(keep)[1].astype(np.int64)
    return rng.standard_normal((len(cols), r, c)).astype(np.float32), cols, crow


def _ort_dense(x: np.ndarray, weight: np.ndarray, threads: int, repeats: int) -> float:
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
    return median_ms(lambda: session.run(None, {"x": x}), repeats)


def _tvm_dense_tuned(
    x: np.ndarray, weight: np.ndarray, threads: int, trials: int, tuning_dir: Path, repeats: int
) -> tuple[float, dict[str, object]]:
    """Median ms of y = x @ weightᵀ compiled by TVM after tuning, and what tuning did."""
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = torch.from_numpy(weight)
    program = torch.export.export(linear.eval(), (torch.from_numpy(x),))
    target = host_target(threads)
    imported = import_graph(program, target)  # the weight becomes main's second parameter
    result = tune_module(imported.module, target, TuneBudget(trials), tuning_dir)
    print(
        f"  TVM dense {x.shape[0]}x{x.shape[1]}->{weight.shape[0]} thr {threads}: {result.note()}",
        flush=True,
    )
    machine = tvm.relax.VirtualMachine(compile_module(result.module, target), tvm.cpu())
    args = [tvm.runtime.tensor(x), *(tvm.runtime.tensor(p) for p in imported.params)]
    set_threads(threads)
    ms = median_ms(lambda: machine["main"](*args), repeats)
    info = {
        "trials_budget": trials,
        "tasks_tuned": len(result.tuned),
        "tasks_reused": len(result.reused),
        "tasks_failed": len(result.failed),
        "trials_measured": result.trials,
        "tuning_s": result.seconds,
        "database": str(result.database),
    }
    return ms, info


def _dense_child(shape_index: int, threads: int, repeats: int) -> dict[str, float]:
    """torch's and ORT's dense times for one shape, measured in this (fresh) process."""
    tokens, in_f, out_f = SHAPES[shape_index]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((tokens, in_f)).astype(np.float32)
    weight = rng.standard_normal((out_f, in_f)).astype(np.float32)
    torch.set_num_threads(threads)
    x_t, w_t = torch.from_numpy(x), torch.from_numpy(weight)
    torch_ms = median_ms(lambda: torch.nn.functional.linear(x_t, w_t), repeats)
    return {"torch_ms": torch_ms, "ort_ms": _ort_dense(x, weight, threads, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=SPARSITIES)
    parser.add_argument("--shapes", type=int, nargs="+", default=[0, 1], help="indices into SHAPES")
    parser.add_argument(
        "--blocks", nargs="+", default=[f"{r}x{c}" for r, c in BLOCKS], help="r×c, e.g. 16x1"
    )
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--tune-trials",
        type=int,
        default=64,
        help="meta-schedule trials per shape and thread count for TVM dense (0: no column)",
    )
    parser.add_argument(
        "--tuning-dir",
        type=Path,
        default=DEFAULT_TUNING_DIR,
        help="persistent tuning records (reused by later runs)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tvm_sparse.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--isa",
        choices=sorted(ISAS),
        default=isa_of(host_target()).name,
        help="the ISA the kernels are generated for (default: this host's)",
    )
    args = parser.parse_args()
    if lacking := missing_here(ISAS[args.isa]):
        sys.exit(
            f"{args.isa} kernels cannot run here: this host ({host_target().attrs['mcpu']}) lacks "
            f"{lacking}. Their code builds here (tests check it); time "
            "them on such a host."
        )
    if args.child:
        emit(_dense_child(args.shapes[0], args.threads[0], args.repeats))
        return
    rng = np.random.default_rng(0)
    rows = []
    controls: list[dict[str, object]] = []
    load_before = os.getloadavg()
    print(machine_line(), f"kernels for {args.isa}")
    header = (
        f"{'shape':>16} {'thr':>3} {'s':>5} {'block':>5} {'tvm ms':>8} {'ort ms':>8} "
        f"{'torch ms':>8} {'tuned ms':>8} {'speedup':>7} {'ideal':>5}"
    )
    print(header)
    tuning: list[dict[str, object]] = []
    for shape_index in args.shapes:
        tokens, in_f, out_f = SHAPES[shape_index]
        x = rng.standard_normal((tokens, in_f)).astype(np.float32)
        weight = rng.standard_normal((out_f, in_f)).astype(np.float32)
        for threads in args.threads:
            target = isa_target(args.isa, threads)
            isa = isa_of(target)
            set_threads(threads)
            torch.set_num_threads(threads)
            # the dense runtimes in a fresh process each (`_isolation`); ORT again in this
            # one after the kernels below, as the same-process control
            dense = in_fresh_process(
                Path(__file__),
                ["dense", "--threads", str(threads), "--shapes", str(shape_index)]
                + ["--repeats", str(args.repeats)],
            )
            torch_ms, ort_ms = dense["torch_ms"], dense["ort_ms"]
            tuned_ms = None
            if args.tune_trials > 0:
                tuned_ms, info = _tvm_dense_tuned(
                    x, weight, threads, args.tune_trials, args.tuning_dir, args.repeats
                )
                tuning.append(
                    {
                        "tokens": tokens,
                        "in": in_f,
                        "out": out_f,
                        "threads": threads,
                        "ort_dense_ms": ort_ms,
                        "torch_dense_ms": torch_ms,
                        "tvm_dense_tuned_ms": tuned_ms,
                        **info,
                    }
                )
                print(header, flush=True)
            best_dense = min(ms for ms in (torch_ms, ort_ms, tuned_ms) if ms is not None)
            kernels = {}
            for block in args.blocks:
                r, c = (int(part) for part in block.split("x"))
                shape = BsrShape(out_f, in_f, r, c)
                func = bsr_kernel(shape, choose_schedule(shape, isa), isa)
                with tvm.transform.PassContext(config=compile_config()):
                    library = tvm.compile(
                        tvm.IRModule({"k": func.with_attr("global_symbol", "k")}), target=target
                    )
                kernels[(r, c)] = library["k"]
            for sparsity in args.sparsities:
                for (r, c), kernel in kernels.items():
                    shape = BsrShape(out_f, in_f, r, c)
                    values, cols, crow = _bsr(out_f, in_f, r, c, sparsity, rng)
                    if choose_schedule(shape, isa) is Schedule.TOKEN:
                        values, cols, crow = (
                            a.numpy()
                            for a in slab_major(
                                shape, *(torch.from_numpy(a) for a in (values, cols, crow))
                            )
                        )
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
                    tvm_ms = median_ms(lambda: kernel(*tensors), args.repeats)  # noqa: B023
                    row = {
                        "tokens": tokens,
                        "in": in_f,
                        "out": out_f,
                        "threads": threads,
                        "sparsity": sparsity,
                        "block": f"{r}x{c}",
                        "schedule": choose_schedule(shape, isa).value,
                        "isa": isa.name,
                        "tvm_sparse_ms": tvm_ms,
                        "ort_dense_ms": ort_ms,
                        "torch_dense_ms": torch_ms,
                        "tvm_dense_tuned_ms": tuned_ms,
                        "speedup": best_dense / tvm_ms,
                        "ideal": 1 / (1 - sparsity),
                    }
                    rows.append(row)
                    print(
                        f"{tokens}x{in_f}->{out_f:>5} {threads:>3} {sparsity:>5.2f} {r}x{c:<3} "
                        f"{tvm_ms:8.3f} {ort_ms:8.3f} {torch_ms:8.3f} "
                        f"{tuned_ms if tuned_ms is not None else float('nan'):8.3f} "
                        f"{row['speedup']:7.2f} "
                        f"{row['ideal']:5.1f}",
                        flush=True,
                    )
            same = _ort_dense(x, weight, threads, args.repeats)
            controls.append(
                {"in": in_f, "out": out_f, "threads": threads, "ort_own_process_ms": ort_ms}
                | {"ort_same_process_ms": same}
            )
            print(f"  control: ORT dense in this process after the kernels {same:.3f} ms")
    load_after = os.getloadavg()
    print(f"load after {load_after}")
    if tuning:
        print("dense per (shape, threads): ORT, torch, TVM tuned (ms)")
        for entry in tuning:
            print(
                f"  {entry['tokens']}x{entry['in']}->{entry['out']} thr {entry['threads']}: "
                f"ORT {entry['ort_dense_ms']:.3f}, torch {entry['torch_dense_ms']:.3f}, "
                f"TVM tuned {entry['tvm_dense_tuned_ms']:.3f} ({entry['trials_measured']} trials "
                f"measured in this run, {entry['tuning_s']:.0f} s; "
                f"{entry['tasks_reused']} task(s) reused from {entry['database']})"
            )
    print("best block shape per (shape, threads, sparsity):")
    best: dict[tuple[object, ...], dict[str, object]] = {}
    for row in rows:
        key = (row["in"], row["out"], row["threads"], row["sparsity"])
        if key not in best or row["speedup"] > best[key]["speedup"]:  # type: ignore[operator]
            best[key] = row
    for (in_f, out_f, threads, sparsity), row in best.items():
        print(
            f"  {in_f}->{out_f} thr {threads} s {sparsity:.2f}: {row['block']} "
            f"{row['tvm_sparse_ms']:.3f} ms, {row['speedup']:.2f}x over fastest dense"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                **machine(),
                "kernel_isa": args.isa,
                "same_process_control": controls,
                "load_before": load_before,
                "load_after": load_after,
                "command": " ".join(["python", *sys.argv]),
                "tvm_dense_tuning": tuning,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
