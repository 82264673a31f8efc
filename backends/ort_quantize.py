"""INT8 for the ONNX Runtime backend: ORT's own quantization tools on the exported model.

Rules:
- `Quantize.DYNAMIC`: `onnxruntime.quantization.quantize_dynamic`. Weights are INT8 (per
  channel by default); activations are quantized per call, so no data is needed. This is the
  usual choice for transformer linears.
- `Quantize.STATIC`: `quantize_static` in QDQ format. INT8 weights (per channel by default)
  and INT8 activations, with scales from `calibration` batches (`OrtOptions.calibration_batches`
  of them) and the calibration method chosen in `CalibrateMethod`. The model is shape-inferred
  first (`quant_pre_process`); if that fails, the notes say so and quantization goes on
  without it.
- Static needs calibration data: without any, PreconditionError names the fix. A batch that
  does not fit the compiled inputs is an InputError naming the input, before ORT sees it.
- The INT8 model replaces `model.onnx`, so the artifact holds only what runs. The record
  (mode, method, per channel, batches) goes into the manifest, and the report's
  `backend_error` is the INT8 model's deviation from the fp32 graph on the example inputs.
- Prune first, then quantize: the pruned widths are what gets calibrated.
- On a CPU without VNNI (AVX-512 VNNI or AVX-VNNI), ORT's integer kernels multiply u8 by s8
  with AVX2's `vpmaddubsw`, whose 16-bit sums saturate: a small FFN's outputs were off by
  21% instead of 1.4%. There, weights are quantized to 7 bits (`reduce_range`), and the
  record and notes say so. `host_has_vnni` reads the CPU flags (Linux `/proc/cpuinfo`). Where
  it cannot read them, it assumes no VNNI, the safe side.

Example:
    sparsec.compile(model, x, pipeline="structured-50", backend="onnxruntime",
                    backend_options={"quantize": "static"}, calibration=batches)
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnxruntime import quantization as ortq
from onnxruntime.quantization.shape_inference import quant_pre_process

from sparsec.calibration import Calibration
from sparsec.errors import BackendError, InputError, PreconditionError
from sparsec.ir.graph import InputSpec
from sparsec.signature import check_inputs

__all__ = ["CalibrateMethod", "Quantize", "host_has_vnni", "quantize_model"]

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


class Quantize(StrEnum):
    """Whether and how the ONNX Runtime backend quantizes to INT8."""

    NONE = "none"
    DYNAMIC = "dynamic"
    STATIC = "static"


class CalibrateMethod(StrEnum):
    """How static quantization picks activation ranges from the calibration batches."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


_ORT_METHODS = {
    CalibrateMethod.MINMAX: ortq.CalibrationMethod.MinMax,
    CalibrateMethod.ENTROPY: ortq.CalibrationMethod.Entropy,
    CalibrateMethod.PERCENTILE: ortq.CalibrationMethod.Percentile,
}


def host_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has VNNI integer dot products (see module rules)."""
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        return False
    return any(flag in flags for flag in _VNNI_FLAGS)


class _Batches(ortq.CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration batches to ORT's calibrator as {input name: array}."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _feeds(
    calibration: Calibration, specs: Sequence[InputSpec], names: Sequence[str], limit: int
) -> list[dict[str, np.ndarray]]:
    """The first `limit` calibration batches as ORT feeds, each checked against the inputs."""
    feeds = []
    for index, (args, kwargs) in enumerate(calibration):
        if index >= limit:
            break
        check_inputs(specs, args, kwargs)  # InputError names the input and the expected shape
        tensors = [
            leaf
            for leaf in (*torch.utils._pytree.tree_leaves(tuple(args)), *_ordered(kwargs, specs))
            if isinstance(leaf, torch.Tensor)
        ]
        if len(tensors) != len(names):
            raise PreconditionError(
                f"calibration batch {index} has {len(tensors)} input tensors; the model takes "
                f"{len(names)} ({', '.join(names)}). Fix: give batches shaped like the example "
                "inputs (Calibration(batches, inputs=...) picks them out of a larger batch)."
            )
        feeds.append(
            {
                name: t.detach().cpu().contiguous().numpy()
                for name, t in zip(names, tensors, strict=True)
            }
        )
    if not feeds:
        raise PreconditionError(
            "static INT8 quantization got an empty calibration set. Fix: give at least one batch."
        )
    return feeds


def _ordered(kwargs: dict[str, Any], specs: Sequence[InputSpec]) -> list[Any]:
    """Keyword inputs in the compiled order (ONNX inputs follow it)."""
    order = {spec.name: index for index, spec in enumerate(specs)}
    return [
        value
        for _, value in sorted(kwargs.items(), key=lambda item: order.get(item[0], len(order)))
    ]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs and prints per tensor; keep a compile's output readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize_model(
    model_path: Path,
    *,
    mode: Quantize,
    method: CalibrateMethod,
    per_channel: bool,
    batches: int,
    calibration: Calibration | None,
    specs: Sequence[InputSpec],
    input_names: Sequence[str],
) -> tuple[dict[str, Any], list[str]]:
    """Replace the fp32 `model_path` with its INT8 version; return the record and notes."""
    if mode is Quantize.STATIC and calibration is None:
        raise PreconditionError(
            "quantize=static needs calibration batches to set activation ranges. Fix: pass "
            "calibration=[batch, ...] to sparsec.compile() (`--calibration module:attr` on the "
            "command line), or use quantize=dynamic, which needs no data."
        )
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sparsec-int8-") as scratch:
        source = model_path
        output = Path(scratch) / "int8.onnx"
        reduce_range = not host_has_vnni()
        record: dict[str, Any] = {
            "mode": mode.value,
            "per_channel": per_channel,
            "reduce_range": reduce_range,
        }
        try:
            with _quiet():
                if mode is Quantize.DYNAMIC:
                    ortq.quantize_dynamic(
                        source,
                        output,
                        per_channel=per_channel,
                        reduce_range=reduce_range,
                        weight_type=ortq.QuantType.QInt8,
                    )
                else:
                    assert calibration is not None
                    feeds = _feeds(calibration, specs, input_names, batches)
                    prepared = Path(scratch) / "prepared.onnx"
                    try:
                        quant_pre_process(source, prepared, skip_symbolic_shape=True)
                        source = prepared
                    except Exception as exc:  # ORT's shape inference raises untyped errors
                        notes.append(
                            f"INT8: ORT's quantization pre-processing failed ({exc}); "
                            "quantized without it"
                        )
                    ortq.quantize_static(
                        source,
                        output,
                        _Batches(feeds),
                        quant_format=ortq.QuantFormat.QDQ,
                        per_channel=per_channel,
                        reduce_range=reduce_range,
                        activation_type=ortq.QuantType.QInt8,
                        weight_type=ortq.QuantType.QInt8,
                        calibrate_method=_ORT_METHODS[method],
                    )
                    record.update(calibrate_method=method.value, calibration_batches=len(feeds))
        except (PreconditionError, BackendError, InputError):
            raise
        except Exception as exc:  # the quantizer raises many types; the cause is in the message
            raise BackendError(
                f"ONNX Runtime's {mode.value} INT8 quantization failed: {exc}. Fix: compile "
                "without quantize, or try the other quantize mode."
            ) from exc
        output.replace(model_path)
    what = (
        "INT8 weights, activations quantized per call"
        if mode is Quantize.DYNAMIC
        else f"INT8 QDQ, {method.value} calibration on {record['calibration_batches']} batches"
    )
    channel = "per-channel" if per_channel else "per-tensor"
    notes.append(f"quantized by ONNX Runtime ({mode.value}): {what}, {channel} weights")
    if reduce_range:
        notes.append(
            "INT8: this CPU has no VNNI, so weights use 7 of 8 bits (reduce_range) to keep "
            "AVX2's u8×s8 multiply from saturating"
        )
    return record, notes
