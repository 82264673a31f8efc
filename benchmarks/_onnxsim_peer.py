"""Peer baseline: onnxsim 0.8.1's own ONNX-level structured and attention-head pruning.

Why: a benchmark that compares sparsec's pruning with a peer tool needs that tool's pruned
model, made at the same ratio from the same ONNX file. onnxsim is the closest peer (it prunes
ONNX graphs directly, no framework), but it is a large native package the project does not
depend on, so it runs in its own interpreter: `prune` starts
`$SPARSEC_ONNXSIM_PYTHON` (default `/work/onnxsim-venv/bin/python`) in a subprocess and the
project's venv never imports onnxsim.

What the child calls (onnxsim 0.8.1, all `onnxsim.<name>(model, sparsity=...)`, each taking
a ModelProto or a path and returning a new ModelProto, the input left unchanged):
- `apply_attention_head_pruning` (heads=True): removes the lowest-L2 heads (KV groups for
  GQA) of fused Attention ops and of decomposed torch exports. Its decomposed matcher needs
  the Q/K/V projections to be a bare MatMul or a Gemm; a `MatMul -> Add(bias)` export matches
  nothing, so when the first pass changes nothing the child retries once on
  `onnxsim.simplify(model, skipped_optimizers=["fuse_attention"])`, which folds the bias into
  Gemm and keeps the attention decomposed (plain `simplify` fuses it into a
  `com.microsoft::Attention` that the head pass then declines). `api` says when it did.
- `apply_structured_pruning`: removes the lowest-L2 output channels of MatMul/Gemm/Conv
  producer -> consumer chains (FFN hidden size, Conv filters); attention Q/K/V are untouched.
`sparsity` is the fraction removed: each matched layer keeps `max(1, n - round(n * ratio))`
of its n channels (heads). Both are data-free; the Wanda variants would need calibration.

`prune` returns a dict: ok, error, api (the onnxsim functions used, in order), plus, when
ok, onnxsim_version, params_before/params_after (initializer elements), changed_tensors
(initializers whose shape changed), heads_changed (tensors the head pass changed, or None
when it did not run), attention (whether the graph has attention) and seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

__all__ = ["DEFAULT_PYTHON", "INSTALL_HINT", "onnxsim_python", "prune"]

DEFAULT_PYTHON = "/work/onnxsim-venv/bin/python"
INSTALL_HINT = (
    "python3.11 -m venv /work/onnxsim-venv && "
    "/work/onnxsim-venv/bin/pip install onnxsim==0.8.1 onnx onnxruntime numpy "
    "(or point SPARSEC_ONNXSIM_PYTHON at a python that has onnxsim==0.8.1)"
)
_MARK = "__ONNXSIM_PEER__"
_TIMEOUT_S = 1800

_CHILD = r"""
import json, sys, time
args = json.loads(sys.argv[1])
res = {"ok": False, "error": None, "api": ""}
try:
    import onnx
    import onnxsim
    from onnx import numpy_helper
except Exception as e:
    res["error"] = "cannot import onnxsim/onnx: %s: %s" % (type(e).__name__, e)
    print(args["mark"] + json.dumps(res))
    sys.exit(0)

ATTN = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PagedAttention",
        "SparseAttention", "LinearAttention"}

def shapes(m):
    return {t.name: tuple(t.dims) for t in m.graph.initializer}

def params(m):
    n = 0
    for dims in shapes(m).values():
        k = 1
        for d in dims:
            k *= d
        n += k
    return n

def changed(a, b):
    sa, sb = shapes(a), shapes(b)
    return sum(1 for k, v in sb.items() if k in sa and sa[k] != v)

api = []
try:
    t0 = time.perf_counter()
    model = onnx.load(args["in_path"])
    ops = {n.op_type for n in model.graph.node}
    attention = bool(ops & ATTN) or "Softmax" in ops
    out = model
    heads_changed = None
    if args["heads"] and attention:
        pruned = onnxsim.apply_attention_head_pruning(out, sparsity=args["ratio"])
        api.append("apply_attention_head_pruning")
        if changed(out, pruned) == 0 and not ops & ATTN:
            simple, _ = onnxsim.simplify(out, skipped_optimizers=["fuse_attention"])
            retry = onnxsim.apply_attention_head_pruning(simple, sparsity=args["ratio"])
            if changed(simple, retry) > 0:
                api.insert(-1, 'simplify(skipped_optimizers=["fuse_attention"])')
                out, pruned = simple, retry
        heads_changed = changed(out, pruned)
        out = pruned
    out = onnxsim.apply_structured_pruning(out, sparsity=args["ratio"])
    api.append("apply_structured_pruning")
    if out.ByteSize() > 2_000_000_000:
        onnx.save(out, args["out_path"], save_as_external_data=True,
                  location=args["out_name"] + ".data")
    else:
        onnx.save(out, args["out_path"])
    res.update(
        ok=True,
        onnxsim_version=str(onnxsim.__version__),
        params_before=params(model),
        params_after=params(out),
        changed_tensors=changed(model, out),
        heads_changed=heads_changed,
        attention=attention,
        seconds=round(time.perf_counter() - t0, 3),
    )
except Exception as e:
    res["error"] = "%s: %s" % (type(e).__name__, e)
res["api"] = "+".join(api)
print(args["mark"] + json.dumps(res))
"""


def onnxsim_python() -> str:
    """The interpreter that has onnxsim: `$SPARSEC_ONNXSIM_PYTHON` or DEFAULT_PYTHON."""
    return os.environ.get("SPARSEC_ONNXSIM_PYTHON") or DEFAULT_PYTHON


def prune(in_path: Path, out_path: Path, ratio: float, heads: bool) -> dict[str, object]:
    """Prune `in_path` with onnxsim at `ratio` (fraction removed) and write `out_path`.

    Runs in onnxsim's own interpreter; never raises for onnxsim's failures, which come back
    as ok=False with the error text.
    """
    api = ("apply_attention_head_pruning+" if heads else "") + "apply_structured_pruning"
    python = onnxsim_python()
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        return {
            "ok": False,
            "error": f"no onnxsim interpreter at {python}; install it: {INSTALL_HINT}",
            "api": api,
        }
    if not 0.0 <= ratio < 1.0:
        return {"ok": False, "error": f"ratio must be in [0, 1), got {ratio}", "api": api}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = {
        "in_path": str(Path(in_path).resolve()),
        "out_path": str(out_path.resolve()),
        "out_name": out_path.name,
        "ratio": float(ratio),
        "heads": bool(heads),
        "mark": _MARK,
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        proc = subprocess.run(
            [python, "-c", _CHILD, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "api": api}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            result: dict[str, object] = json.loads(line[len(_MARK) :])
            if result.get("error") and "cannot import onnxsim" in str(result["error"]):
                result["error"] = f"{result['error']}; install it: {INSTALL_HINT}"
            return result
    tail = (proc.stderr or proc.stdout).strip()[-2000:]
    return {"ok": False, "error": f"onnxsim child exited {proc.returncode}: {tail}", "api": api}
