"""A BERT-base-sized encoder, 90% 16×1 block-sparse linears on TVM vs the dense model on ORT.

Rules:
- the model is `transformers.BertModel(BertConfig())` (hidden 768, 12 layers, FFN 3072;
  `--layers` fewer on a slow machine) with random weights, sequence 128, batch 1 and 8,
  inputs `input_ids` plus explicit token types and positions (so torch.export sees no
  sliced buffers);
- variants: `tvm` (`sparsify{pattern=block,block=[16,1],sparsity=0.9}` then
  `lower-sparse-weights{format=bsr,gate=off}` with `backend="tvm"`: partitioned, our
  kernels for the 72 linears, torch for attention, norms and GELU), `ort` (`pipeline="none"`
  on `backend="onnxruntime"`), `ort-int8` (that ONNX model through
  `onnxruntime.quantization.quantize_dynamic`, INT8 weights: the simplest alternative a
  user has), `torch` (eager, dense, for reference) and with `--unfused`
  `tvm-unfused` (the same sparse build with `fuse_chains=False`);
- **each variant is compiled and timed in its own fresh process** (`_isolation`), one
  process per variant and thread count, compiled once on the largest batch and timed at
  every batch (dynamic batch); then a **same-process control** compiles `tvm` and `ort` in
  one (fresh) process and times them back to back, as earlier versions of this benchmark did, so
  the effect of sharing a process is measured, not assumed;
- the same thread count everywhere (torch, ORT intra-op, TVM's pool); medians of
  `--repeats` runs after warm-up; CPU model, ISA and the load average before and after;
  pin the whole run with taskset;
- `--isa avx2|avx512|generic` builds the sparse variants' kernels for that ISA (default: this
  host's); one this host cannot run is refused with the reason (time it on a host that has it);
- prints a table and writes benchmarks/results/tvm_e2e.json.

Example:
    taskset -c 0,1 python benchmarks/tvm_e2e.py --threads 1 2
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import sparsec
from sparsec.backends.tvm import TvmOptions
from sparsec.backends.tvm.isa import ISAS, isa_of, isa_target, missing_here
from sparsec.backends.tvm.partitioned import PartitionedExecutable
from sparsec.backends.tvm.target import host_target

sys.path.insert(0, str(Path(__file__).parent))
from _isolation import emit, in_fresh_process, machine, machine_line, median_ms, write_results  # noqa: E402

SEQUENCE = 128
SPARSE_PIPELINE = (
    "sparsify{pattern=block,block=[16,1],sparsity=0.9},lower-sparse-weights{format=bsr,gate=off}"
)


class Encoder(torch.nn.Module):
    """BertModel without the pooler, returning the last hidden state only."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="sdpa")
        self.bert = transformers.BertModel(config, add_pooling_layer=False).eval()
        self.vocab = config.vocab_size

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.bert(
            input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids
        ).last_hidden_state


def _inputs(batch: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, SEQUENCE), generator=gen)
    positions = torch.arange(SEQUENCE).expand(batch, SEQUENCE).contiguous()
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "position_ids": positions}


def _int8(dense: Any, threads: int) -> Any:
    """The dense ONNX model with dynamic INT8 quantization (onnxruntime.quantization), the
    simplest speed-up a user has without sparsec; a callable taking the same keywords."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="sparsec-int8-") as scratch:  # ORT reads it whole
        directory = Path(scratch)
        dense.save(directory / "dense")
        quantized = directory / "int8.onnx"
        quantize_dynamic(directory / "dense" / "model.onnx", quantized, weight_type=QuantType.QInt8)
        session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(**inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: inputs[name].numpy() for name in names}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


def _build(
    variant: str, model: Encoder, inputs: dict[str, torch.Tensor], threads: int, isa: str
) -> Any:
    """The callable of one variant, compiled on `inputs`; sparse kernels for `isa`."""
    if variant == "torch":
        return model
    if variant in ("ort", "ort-int8"):
        dense = sparsec.compile(
            model, inputs, pipeline="none", backend="onnxruntime", threads=threads
        )
        return dense if variant == "ort" else _int8(dense, threads)
    sparse = sparsec.compile(
        model, inputs, pipeline=SPARSE_PIPELINE, backend="tvm", threads=threads
    )
    if variant == "tvm" and isa == isa_of(host_target()).name:
        return sparse
    return PartitionedExecutable.build(
        sparse.graph,
        isa_target(isa, threads),
        threads,
        dense_threads=TvmOptions().dense_threads,  # as the compiled build
        fuse_chains=variant == "tvm",
    )


def _time(
    variant: str, layers: int, threads: int, batches: list[int], repeats: int, isa: str
) -> dict[str, Any]:
    """Compile `variant` on the largest batch and time it at each batch, in this process."""
    torch.set_num_threads(threads)
    model = Encoder(layers)
    start = time.perf_counter()
    runner = _build(variant, model, _inputs(max(batches), model.vocab), threads, isa)
    compile_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "variant": variant,
        "threads": threads,
        "compile_s": round(compile_s, 1),
        "ms": {},
        "notes": list(getattr(getattr(runner, "executable", None), "notes", [])),
    }
    for batch in batches:
        inputs = _inputs(batch, model.vocab)
        with torch.no_grad():
            result["ms"][str(batch)] = round(
                median_ms(functools.partial(runner, **inputs), repeats, warmup=2), 2
            )
            if variant.startswith("tvm"):
                expected = model(**inputs)
                result.setdefault("max_abs_vs_dense_torch", {})[str(batch)] = float(
                    (torch.as_tensor(runner(**inputs)) - expected).abs().max()
                )
    del runner
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (BERT-base: 12)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--unfused", action="store_true", help="also time the build without fused FFN chains"
    )
    parser.add_argument(
        "--no-control", action="store_true", help="skip the same-process control rows"
    )
    parser.add_argument(
        "--isa",
        choices=sorted(ISAS),
        default=isa_of(host_target()).name,
        help="the ISA the sparse kernels are built for (default: this host's)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tvm_e2e.json"))
    args = parser.parse_args()
    if lacking := missing_here(ISAS[args.isa]):
        parser.error(
            f"{args.isa} kernels cannot run here: this host ({host_target().attrs['mcpu']}) lacks "
            f"{lacking}; time them on a host that has them"
        )
    if args.child == "control":  # tvm, then ort, in this one process
        both = {
            v: _time(v, args.layers, args.threads[0], args.batches, args.repeats, args.isa)
            for v in ("tvm", "ort")
        }
        emit(both)
        return
    if args.child:
        emit(_time(args.child, args.layers, args.threads[0], args.batches, args.repeats, args.isa))
        return
    before = machine()
    print(
        f"{machine_line(before)}; BERT-base layers {args.layers} seq {SEQUENCE}; "
        f"kernels for {args.isa}",
        flush=True,
    )
    variants = ["tvm", "ort", "ort-int8", "torch", *(["tvm-unfused"] if args.unfused else [])]
    common = ["--layers", str(args.layers), "--repeats", str(args.repeats), "--isa", args.isa]
    common += ["--batches"]
    common += [str(b) for b in args.batches]
    separate: dict[tuple[str, int], dict[str, Any]] = {}
    control: dict[tuple[str, int], dict[str, Any]] = {}
    for threads in args.threads:
        for variant in variants:
            separate[variant, threads] = in_fresh_process(
                Path(__file__), [variant, "--threads", str(threads), *common]
            )
            print(
                f"  {variant} thr {threads} (own process): {separate[variant, threads]['ms']}",
                flush=True,
            )
        if not args.no_control:  # tvm first, then ort, in one process (itself a fresh one)
            try:
                both = in_fresh_process(
                    Path(__file__), ["control", "--threads", str(threads), *common]
                )
            except RuntimeError as exc:  # reported, not fatal: the table's rows stand alone
                print(f"  control thr {threads} failed: {str(exc)[-300:]}", flush=True)
                continue
            for variant in ("tvm", "ort"):
                control[variant, threads] = both[variant]
                print(
                    f"  {variant} thr {threads} (same process): {both[variant]['ms']}", flush=True
                )
    after = machine()
    rows = []
    for threads in args.threads:
        for batch in map(str, args.batches):
            ms = {v: separate[v, threads]["ms"][batch] for v in variants}
            row = {
                "threads": threads,
                "batch": int(batch),
                **{f"{v}_ms": ms[v] for v in variants},
                "speedup_vs_ort": round(ms["ort"] / ms["tvm"], 2),
                "speedup_vs_ort_int8": round(ms["ort-int8"] / ms["tvm"], 2),
                "max_abs_vs_dense_torch": separate["tvm", threads]["max_abs_vs_dense_torch"][batch],
            }
            if ("tvm", threads) in control:
                same = {v: control[v, threads]["ms"][batch] for v in ("tvm", "ort")}
                row["same_process"] = {
                    "tvm_ms": same["tvm"],
                    "ort_ms": same["ort"],
                    "speedup_vs_ort": round(same["ort"] / same["tvm"], 2),
                }
            rows.append(row)
    print(f"\n{machine_line(after)}")
    print("each runtime in its own process:")
    print(
        f"{'thr':>3} {'batch':>5} "
        + " ".join(f"{v + ' ms':>15}" for v in variants)
        + f" {'vs ort':>8} {'vs int8':>8}"
    )
    for row in rows:
        print(
            f"{row['threads']:>3} {row['batch']:>5} "
            + " ".join(f"{row[v + '_ms']:>15.2f}" for v in variants)
            + f" {row['speedup_vs_ort']:>7.2f}x {row['speedup_vs_ort_int8']:>7.2f}x"
        )
    if control:
        print("control, tvm then ort in one process:")
        for row in rows:
            if "same_process" not in row:
                continue
            same = row["same_process"]
            print(
                f"{row['threads']:>3} {row['batch']:>5} tvm {same['tvm_ms']:.2f} ms, "
                f"ort {same['ort_ms']:.2f} ms, {same['speedup_vs_ort']:.2f}x"
            )
    write_results(
        args.out,
        before,
        after,
        pipeline=SPARSE_PIPELINE,
        kernel_isa=args.isa,
        notes=separate["tvm", args.threads[0]]["notes"],
        compile_s={f"{v}-{t}": r["compile_s"] for (v, t), r in separate.items()},
        rows=rows,
    )


if __name__ == "__main__":
    main()
