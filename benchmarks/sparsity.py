"""Fine-grained sparsity: accuracy and output deviation per pattern and method, kernel times, artifact sizes.

- digits (sklearn's bundled 8×8 digits): an MLP trained here, then 50% unstructured, 2:4 and
  4:8 by magnitude, Wanda and SparseGPT (calibration: training batches); test accuracy;
- with `--sections cnn` (opt-in): the residual digits CNN of `benchmarks/criteria.py`
  (trained `--cnn-epochs` epochs), its convs and head sparsified the same ways
  (`layers=[linear,conv]`; the 1-channel stem takes no N:M), test accuracy and the share of
  zero conv/linear weights;
- a BERT-base-sized and a GPT-2-small-sized model from config (random weights; `--size
  small` shrinks them to 4 layers × 256 wide for a quick run): relative deviation of the
  last hidden state from dense on held-out inputs, and SparseGPT's streamed peak;
- kernel times for BERT-base FFN shapes (x [128, 768], W [3072, 768]): torch dense vs
  sparsec's reference kernels (fastest of N runs, 1 and 2 threads);
- artifact sizes: weights.safetensors and model.onnx, dense vs lowered sparse.

Run: `python benchmarks/sparsity.py [--size small|full] [--repeats 20] [--sections ...]`;
writes benchmarks/results/sparsity.json (sparsity_<sections>.json for other sections).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sparsec  # noqa: E402
from sparsec.calibration import Calibration  # noqa: E402
from sparsec.frontends import trace  # noqa: E402
from sparsec.latency_model import ReferenceLatencyModel  # noqa: E402
from sparsec.ops import SparsityPattern  # noqa: E402
from sparsec.passes.rewrite import (  # noqa: E402
    CanonicalizeLinear,
    LowerSparseWeights,
    Sparsify,
    SparsifySummary,
)
from sparsec.pipeline import AnalysisManager, PassManager, Pipeline  # noqa: E402

PATTERNS: dict[str, dict[str, Any]] = {
    "50% unstructured": {"pattern": "unstructured", "sparsity": 0.5},
    "2:4": {"pattern": "nm", "n": 2, "m": 4},
    "4:8": {"pattern": "nm", "n": 4, "m": 8},
}
METHODS = ("magnitude", "wanda", "sparsegpt")


SECTIONS = ("digits", "cnn", "kernels", "artifacts", "transformers")
DEFAULT_SECTIONS = ("digits", "kernels", "artifacts", "transformers")


def _sparsify(
    model: torch.nn.Module, example: Any, calibration: Calibration, **options: Any
) -> tuple[Any, SparsifySummary]:
    graph = trace(model, example)
    passes = [CanonicalizeLinear(), Sparsify(**options)]  # GPT-2's Conv1D becomes linear first
    run = PassManager(passes).run(graph, AnalysisManager(graph, calibration))
    result = run.results[-1][1]
    assert result is not None and isinstance(result.summary, SparsifySummary)
    return graph, result.summary


def digits(rows: list[dict[str, Any]]) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        for batch in train.split(64):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()

    def accuracy(module: Any) -> float:
        with torch.no_grad():
            return float((module(x[test]).argmax(1) == y[test]).float().mean())

    rows.append(
        {"model": "digits MLP", "pattern": "dense", "method": "-", "accuracy": accuracy(model)}
    )
    calibration = Calibration([x[b] for b in train[:512].split(128)])
    for label, options in PATTERNS.items():
        for method in METHODS:
            graph, _ = _sparsify(model, (x[:2],), calibration, method=method, **options)
            rows.append(
                {
                    "model": "digits MLP",
                    "pattern": label,
                    "method": method,
                    "accuracy": accuracy(graph),
                }
            )


def digits_cnn(rows: list[dict[str, Any]], epochs: int) -> None:
    # the model, data split and training recipe of the criteria benchmark (benchmarks/ is
    # on sys.path when this file runs as a script)
    import criteria

    train, (x_test, y_test) = criteria._data()
    model = criteria._train(train, epochs)
    label = f"digits ResNet ({epochs} ep)"

    def measure(module: Any) -> dict[str, Any]:
        with torch.no_grad():
            accuracy = float((module(x_test).argmax(1) == y_test).float().mean())
        weights = [
            p for name, p in module.named_parameters() if name.endswith("weight") and p.dim() > 1
        ]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        return {"accuracy": round(accuracy, 4), "zero_weights": round(zeros, 3)}

    dense = {"model": label, "pattern": "dense", "method": "-", **measure(model)}
    rows.append({**dense, "layers_sparsified": "-"})
    calibration = Calibration([x for x, _ in train[:8]])
    for pattern, options in PATTERNS.items():
        for method in METHODS:
            graph, summary = _sparsify(
                model,
                (x_test[:2],),
                calibration,
                method=method,
                layers=("linear", "conv"),
                **options,
            )
            sparsified = sum(1 for r in summary.layers if not r["note"].startswith("skipped"))
            rows.append(
                {
                    "model": label,
                    "pattern": pattern,
                    "method": method,
                    **measure(graph.module),
                    "layers_sparsified": f"{sparsified}/{len(summary.layers)}",
                }
            )
            print(rows[-1], flush=True)


def _hf(kind: str, size: str) -> tuple[torch.nn.Module, int]:
    import transformers

    small = size == "small"
    if kind == "bert":
        config = transformers.BertConfig(
            **(
                {
                    "hidden_size": 256,
                    "num_hidden_layers": 4,
                    "num_attention_heads": 4,
                    "intermediate_size": 1024,
                }
                if small
                else {}
            )
        )
        return transformers.BertModel(config, add_pooling_layer=False).eval(), config.vocab_size
    config = transformers.GPT2Config(
        **({"n_embd": 256, "n_layer": 4, "n_head": 4} if small else {}), use_cache=False
    )
    return transformers.GPT2Model(config).eval(), config.vocab_size


def transformers_deviation(rows: list[dict[str, Any]], size: str) -> None:
    for kind in ("bert", "gpt2"):
        torch.manual_seed(0)
        model, vocab = _hf(kind, size)
        gen = torch.Generator().manual_seed(1)
        calibration = Calibration(
            [{"input_ids": torch.randint(0, vocab, (4, 64), generator=gen)} for _ in range(4)]
        )
        held_out = {"input_ids": torch.randint(0, vocab, (4, 64), generator=gen)}
        with torch.no_grad():
            reference = model(**held_out).last_hidden_state
        for label, options in PATTERNS.items():
            for method in METHODS:
                start = time.perf_counter()
                graph, summary = _sparsify(
                    model,
                    {"input_ids": held_out["input_ids"][:2]},
                    calibration,
                    method=method,
                    **options,
                )
                with torch.no_grad():
                    out = graph(**held_out)
                out = (
                    out[0]
                    if isinstance(out, (tuple, list))
                    else getattr(out, "last_hidden_state", out)
                )
                deviation = float((out - reference).norm() / reference.norm())
                rows.append(
                    {
                        "model": f"{kind} ({size})",
                        "pattern": label,
                        "method": method,
                        "relative_deviation": round(deviation, 4),
                        "sparsify_s": round(time.perf_counter() - start, 1),
                        "peak_calibration_MB": round(
                            (summary.peak_calibration_bytes or 0) / 2**20, 2
                        ),
                    }
                )
                print(rows[-1], flush=True)


def kernels(rows: list[dict[str, Any]], repeats: int) -> None:
    for threads in (1, 2):
        model = ReferenceLatencyModel(repeats=repeats, threads=threads)
        for out_features, in_features in ((3072, 768), (768, 3072)):
            dense = model.dense_ms(out_features, in_features, 128)
            cases = [
                ("csr", SparsityPattern("unstructured", 0.5)),
                ("csr", SparsityPattern("unstructured", 0.9)),
                ("bsr", SparsityPattern("block", 0.5, block=(16, 1))),
                ("bsr", SparsityPattern("block", 0.9, block=(16, 1))),
                ("nm", SparsityPattern("nm", n=2, m=4)),
                ("nm", SparsityPattern("nm", n=4, m=8)),
            ]
            for fmt, pattern in cases:
                sparse = model.sparse_ms(fmt, out_features, in_features, 128, pattern)
                rows.append(
                    {
                        "shape": f"[128,{in_features}]x[{out_features},{in_features}]",
                        "threads": threads,
                        "format": f"{fmt} {pattern}",
                        "dense_ms": round(dense, 3),
                        "sparse_ms": round(sparse, 3),
                        "speedup": round(dense / sparse, 2),
                    }
                )


def artifacts(rows: list[dict[str, Any]]) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768)
    ).eval()
    x = torch.randn(4, 768)
    pipelines = {
        "dense": Pipeline([], backend="onnxruntime"),
        "90% unstructured (csr)": Pipeline(
            [Sparsify(sparsity=0.9), LowerSparseWeights(gate="off")], backend="onnxruntime"
        ),
        "90% block 16x1 (bsr)": Pipeline(
            [
                Sparsify(pattern="block", block=(16, 1), sparsity=0.9),
                LowerSparseWeights(gate="off"),
            ],
            backend="onnxruntime",
        ),
        "2:4 (nm)": Pipeline(
            [Sparsify(pattern="nm"), LowerSparseWeights(gate="off")], backend="onnxruntime"
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, pipeline in pipelines.items():
            compiled = sparsec.compile(model, (x,), pipeline=pipeline)
            path = compiled.save(Path(tmp) / label.split()[0].replace("%", ""))
            rows.append(
                {
                    "model": "BERT FFN 768-3072-768",
                    "weights": label,
                    "weights.safetensors_MB": round(
                        (path / "weights.safetensors").stat().st_size / 2**20, 2
                    ),
                    "model.onnx_MB": round((path / "model.onnx").stat().st_size / 2**20, 2),
                    "ort_vs_torch_max_err": compiled.report.backend_error,
                }
            )


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=DEFAULT_SECTIONS)
    parser.add_argument("--cnn-epochs", type=int, default=12)  # as benchmarks/criteria.py
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sections = tuple(s for s in SECTIONS if s in args.sections)
    if args.out is None:
        stem = "sparsity" if sections == DEFAULT_SECTIONS else "sparsity_" + "_".join(sections)
        args.out = Path(__file__).parent / "results" / f"{stem}.json"
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        **{name: [] for name in sections},
    }
    run: dict[str, Callable[[list[dict[str, Any]]], None]] = {
        "digits": digits,
        "cnn": lambda rows: digits_cnn(rows, args.cnn_epochs),
        "kernels": lambda rows: kernels(rows, args.repeats),
        "artifacts": artifacts,
        "transformers": lambda rows: transformers_deviation(rows, args.size),
    }
    for name in sections:
        run[name](results[name])
    print(f"machine: {results['machine']}")
    for name in sections:
        print(f"\n## {name}\n{_table(results[name])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
