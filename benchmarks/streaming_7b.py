"""Calibration of a LLaMA-7B-shaped checkpoint one block at a time: peak memory and time per block.

Rules:
- the checkpoint is LLaMA-7B's shape (32 layers, hidden 4096, intermediate 11008, 32 heads,
  vocabulary 32000; `--layers`/`--hidden`/... change it) with random float16 weights
  (normal, std 0.02; norms 1), written to `--checkpoint` (default under /tmp) one shard per
  layer, so writing holds one layer at a time; an existing checkpoint with the same config
  is reused (its index is written last, so a half-written one is never taken for whole);
- the run (`sparsec.sparsify_checkpoint`, Wanda 50% unstructured by default, on `--samples`
  random windows of `--window` tokens, float32 compute) happens in a fresh process, so its
  peak RSS (`ru_maxrss`, and /proc/self/statm sampled every 20 ms) is the run's own;
- the bound is 2 × one block's weights (as stored) + the activations held + 2 GiB;
- prints the figures with the machine and writes benchmarks/results/streaming_7b.json; the
  sparsified output is deleted afterwards (`--keep-output` keeps it), the input checkpoint
  is kept for the next run (`--delete-checkpoint` removes it).

Example:
    python benchmarks/streaming_7b.py                       # the 7B shape, ~13 GB on disk
    python benchmarks/streaming_7b.py --layers 2 --hidden 256 --intermediate 688 --heads 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _isolation import emit, in_fresh_process, machine, machine_line, write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "streaming_7b.json"
GIB = 1 << 30


def _config(args: argparse.Namespace) -> Any:
    import transformers

    return transformers.LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        vocab_size=args.vocab,
        max_position_embeddings=4096,
        architectures=["LlamaForCausalLM"],
        dtype="float16",
        use_cache=False,
    )


def write_checkpoint(directory: Path, config: Any) -> str:
    """Random float16 weights in the config's shapes, one shard per layer (see rules)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    index = directory / "model.safetensors.index.json"
    if index.is_file() and (directory / "config.json").is_file():
        if json.loads((directory / "config.json").read_text()) == json.loads(config.to_json_string()):
            return "reused"
        raise SystemExit(f"{directory} holds a checkpoint of another shape; delete it or pass --checkpoint")
    directory.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = transformers.LlamaForCausalLM(config).state_dict()
    layers = config.num_hidden_layers
    shard_of: dict[str, int] = {}
    for name in shapes:
        parts = name.split(".")
        shard_of[name] = int(parts[2]) if parts[:2] == ["model", "layers"] else layers
    generator = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    total = 0
    for shard in range(layers + 1):
        file = f"model-{shard + 1:05d}-of-{layers + 1:05d}.safetensors"
        tensors = {}
        for name in (n for n, s in shard_of.items() if s == shard):
            shape = shapes[name].shape
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch.float16)
            else:
                tensors[name] = (torch.randn(shape, generator=generator) * 0.02).half()
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        print(f"wrote {file} ({len(tensors)} tensors)", file=sys.stderr, flush=True)
    config.to_json_file(str(directory / "config.json"))
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return "written"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """The measured run: sparsify the checkpoint, then report memory and times."""
    import torch

    from sparsec.calibration import token_windows
    from sparsec.passes.rewrite import Sparsify
    from sparsec.streaming import sparsify_checkpoint

    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    vocab = json.loads((args.checkpoint / "config.json").read_text())["vocab_size"]
    stream = torch.randint(0, vocab, (args.samples * args.window * 4,), generator=torch.Generator().manual_seed(0))
    calibration = token_windows(stream, window=args.window, count=args.samples)
    spec = Sparsify(method=args.method, pattern=args.pattern, sparsity=args.sparsity)
    result = sparsify_checkpoint(
        args.checkpoint, args.out, calibration, spec, overwrite=True,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    done.set()
    sampler.join()
    emit(
        {
            "baseline_rss_bytes": baseline,
            "peak_rss_bytes_ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_rss_bytes_sampled": peak[0],
            "block_weight_bytes": result.block_weight_bytes,
            "activation_bytes": result.activation_bytes,
            "seconds": result.seconds,
            "blocks": [
                {
                    "block": t.block, "load_s": t.load_s, "calibrate_s": t.calibrate_s,
                    "prune_s": t.prune_s, "write_s": t.write_s, "total_s": t.total_s,
                }
                for t in result.blocks
            ],
            "sparsity": statistics.mean(row["sparsity"] for row in result.layers),
            "threads": torch.get_num_threads(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/sparsec-llama-7b-shape"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/sparsec-llama-7b-shape-sparse"))
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--method", choices=["wanda", "sparsegpt", "magnitude"], default="wanda")
    parser.add_argument("--pattern", choices=["unstructured", "nm"], default="unstructured")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--delete-checkpoint", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    before = machine()
    print(machine_line(before))
    started = time.perf_counter()
    state = write_checkpoint(args.checkpoint, _config(args))
    write_s = time.perf_counter() - started
    print(f"checkpoint {args.checkpoint}: {state} in {write_s:.0f} s")
    forwarded = [
        "--checkpoint", str(args.checkpoint), "--out", str(args.out), "--method", args.method,
        "--pattern", args.pattern, "--sparsity", str(args.sparsity),
        "--samples", str(args.samples), "--window", str(args.window),
    ]
    try:
        run = in_fresh_process(Path(__file__), forwarded, timeout_s=6 * 3600)
    finally:
        if not args.keep_output:
            shutil.rmtree(args.out, ignore_errors=True)
        if args.delete_checkpoint:
            shutil.rmtree(args.checkpoint, ignore_errors=True)
    bound = 2 * run["block_weight_bytes"] + run["activation_bytes"] + 2 * GIB
    peak = max(run["peak_rss_bytes_ru_maxrss"], run["peak_rss_bytes_sampled"])
    per_block = [b["total_s"] for b in run["blocks"]]
    summary = {
        "shape": {k: getattr(args, k) for k in ("layers", "hidden", "intermediate", "heads", "vocab")},
        "pass": f"{args.method} {args.pattern} {args.sparsity}",
        "calibration": f"{args.samples} x {args.window} tokens",
        "checkpoint": state,
        "bound_bytes": bound,
        "within_bound": peak <= bound,
        "block_s_median": statistics.median(per_block),
        "block_s_min": min(per_block),
        "block_s_max": max(per_block),
        **{
            f"{part}_s_median": statistics.median(b[f"{part}_s"] for b in run["blocks"])
            for part in ("load", "calibrate", "prune", "write")
        },
    }
    print(
        f"one block's weights {run['block_weight_bytes'] / GIB:.2f} GiB, activations "
        f"{run['activation_bytes'] / 2**20:.1f} MiB, bound {bound / GIB:.2f} GiB\n"
        f"peak RSS {run['peak_rss_bytes_ru_maxrss'] / GIB:.2f} GiB (ru_maxrss), "
        f"{run['peak_rss_bytes_sampled'] / GIB:.2f} GiB (sampled), baseline "
        f"{run['baseline_rss_bytes'] / GIB:.2f} GiB: {'within' if summary['within_bound'] else 'OVER'} the bound\n"
        f"per block {summary['block_s_median']:.1f} s median ({summary['block_s_min']:.1f}-"
        f"{summary['block_s_max']:.1f}; load {summary['load_s_median']:.1f}, calibrate "
        f"{summary['calibrate_s_median']:.1f}, prune {summary['prune_s_median']:.1f}, write "
        f"{summary['write_s_median']:.1f}), total {run['seconds']:.0f} s for {len(per_block)} "
        f"blocks, {run['threads']} threads, mean sparsity {run['sparsity']:.3f}"
    )
    after = machine()
    print(machine_line(after))
    write_results(args.results, before, after, **summary, run=run)


if __name__ == "__main__":
    main()
