"""INT8 through ONNX Runtime's quantization tools: prune, then quantize, save, load.

The tolerance: an INT8 model's outputs stay within 10% of the fp32 outputs' largest magnitude
on these small random-weight models (measured: 3-6%); the report's backend_error is that
deviation on the example inputs. Quality on trained weights is measured in benchmarks/.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import sparsec
from sparsec.artifact import verify_artifact
from sparsec.backends.onnxruntime import OrtOptions
from sparsec.backends.ort_quantize import host_has_vnni
from sparsec.errors import ConfigError, InputError, PreconditionError

TOLERANCE = 0.1


class SmallCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TokenMlp(torch.nn.Module):
    """Linears over [batch, seq, hidden]: what a transformer's FFN exports as MatMul."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = torch.nn.Linear(32, 128), torch.nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _images(count: int, batch: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 8, 8, generator=generator) for _ in range(count)]


def _close(int8: torch.Tensor, fp32: torch.Tensor) -> float:
    """The INT8 model's largest deviation, relative to the fp32 output's largest magnitude."""
    return float(((int8 - fp32).abs().max() / fp32.abs().max()).detach())


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_pruned_then_static_int8_matches_fp32_and_round_trips(tmp_path: Path) -> None:
    model = SmallCnn().eval()
    batches = _images(6)
    x = batches[0]
    fp32 = sparsec.compile(model, x, pipeline="structured-50", backend="onnxruntime")
    int8 = sparsec.compile(
        model,
        x,
        pipeline="structured-50",
        backend="onnxruntime",
        backend_options={"quantize": "static", "calibration_batches": 4},
        calibration=batches,
    )
    probe = torch.randn(3, 3, 8, 8)  # another batch size: the batch dim stays dynamic
    assert _close(int8(probe), fp32(probe)) < TOLERANCE
    assert 0 < int8.report.backend_error < TOLERANCE * float(fp32(x).abs().max())
    assert any("quantized by ONNX Runtime (static)" in note for note in int8.report.notes)
    saved = int8.save(tmp_path / "int8")
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(saved / "model.onnx")
    quantization = verify_artifact(saved)["backend_metadata"]["quantization"]
    assert quantization == {
        "mode": "static",
        "per_channel": True,
        "reduce_range": not host_has_vnni(),
        "calibrate_method": "minmax",
        "calibration_batches": 4,
    }
    loaded = sparsec.load(saved)
    torch.testing.assert_close(loaded(probe), int8(probe), rtol=0, atol=1e-6)


def test_dynamic_int8_needs_no_data_and_quantizes_the_linears(tmp_path: Path) -> None:
    model = TokenMlp().eval()
    x = torch.randn(2, 16, 32)
    fp32 = model(x)
    int8 = sparsec.compile(
        model, x, pipeline="none", backend="onnxruntime", backend_options={"quantize": "dynamic"}
    )
    probe = torch.randn(5, 16, 32)  # another batch size
    assert _close(int8(probe), model(probe)) < TOLERANCE
    assert _close(int8(x), fp32) < TOLERANCE
    saved = int8.save(tmp_path / "dyn")
    assert "MatMulInteger" in _op_types(saved / "model.onnx") or "DynamicQuantizeLinear" in (
        _op_types(saved / "model.onnx")
    )
    torch.testing.assert_close(sparsec.load(saved)(probe), int8(probe), rtol=0, atol=1e-6)


def test_entropy_calibration_is_a_choice() -> None:
    model = SmallCnn().eval()
    batches = _images(3)
    int8 = sparsec.compile(
        model,
        batches[0],
        pipeline="none",
        backend="onnxruntime",
        backend_options={"quantize": "static", "calibrate_method": "entropy"},
        calibration=batches,
    )
    assert _close(int8(batches[1]), model(batches[1])) < 2 * TOLERANCE
    assert any("entropy calibration on 3 batches" in note for note in int8.report.notes)


def test_static_without_calibration_names_the_fix() -> None:
    with pytest.raises(PreconditionError, match="quantize=static needs calibration.*dynamic"):
        sparsec.compile(
            SmallCnn().eval(),
            _images(1)[0],
            pipeline="none",
            backend="onnxruntime",
            backend_options={"quantize": "static"},
        )


def test_calibration_of_the_wrong_shape_is_an_input_error() -> None:
    wrong = [torch.randn(4, 1, 8, 8)]  # one channel where the model takes three
    with pytest.raises(InputError, match="x"):
        sparsec.compile(
            SmallCnn().eval(),
            _images(1)[0],
            pipeline="none",
            backend="onnxruntime",
            backend_options={"quantize": "static"},
            calibration=wrong,
        )


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_vnni = tmp_path / "vnni"
    with_vnni.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    without = tmp_path / "avx2"
    without.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert host_has_vnni(with_vnni)
    assert not host_has_vnni(without)
    assert not host_has_vnni(tmp_path / "missing")  # unreadable: the safe side


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="quantize must be one of none, dynamic, static"):
        OrtOptions(quantize="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="calibration_batches must be an int >= 1"):
        OrtOptions(calibration_batches=0)
