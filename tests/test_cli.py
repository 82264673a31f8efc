"""The `sparsec` CLI end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def _sparsec(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparsec", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "mlp"
    result = _sparsec(
        "compile", "examples.models:mlp", "--input", "2x64", "--out", str(out), "--print-ir"
    )
    assert result.returncode == 0, result.stderr
    assert "# sparsec report" in result.stdout
    assert "= linear(" in result.stdout  # --print-ir
    return out


def test_compile_writes_an_artifact(artifact: Path) -> None:
    assert {p.name for p in artifact.iterdir()} >= {"manifest.json", "model.onnx", "report.md"}


def test_inspect_shows_manifest_and_report(artifact: Path) -> None:
    result = _sparsec("inspect", str(artifact))
    assert result.returncode == 0, result.stderr
    assert '"format_version": 1' in result.stdout and "# sparsec report" in result.stdout


def test_run_on_npy_input(artifact: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, 64)).astype("float32"))
    result = _sparsec(
        "run",
        str(artifact),
        "--input",
        str(tmp_path / "x.npy"),
        "--output",
        str(tmp_path / "y.npy"),
    )
    assert result.returncode == 0, result.stderr
    assert "output 0: shape [3, 10]" in result.stdout
    assert np.load(tmp_path / "y.npy").shape == (3, 10)


def test_tampered_artifact_is_refused(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact / "current", copy)  # the current version's files, as a flat copy
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes() + b"x")
    result = _sparsec("inspect", str(copy))
    assert result.returncode == 1
    # rich wraps long paths anywhere, so compare without whitespace
    assert "model.onnxdoesnotmatchitssha256" in "".join(result.stderr.split())


def test_bad_model_reference_and_pipeline(tmp_path: Path) -> None:
    result = _sparsec(
        "compile", "examples.models:nope", "--input", "2x64", "--out", str(tmp_path / "x")
    )
    assert result.returncode == 1 and "has no attribute 'nope'" in result.stderr
    result = _sparsec(
        "compile",
        "examples.models:mlp",
        "--input",
        "2x64",
        "--pipeline",
        "prune-channels{ratio=2}",
        "--out",
        str(tmp_path / "y"),
    )
    assert result.returncode == 1 and "ratio" in result.stderr
    assert not (tmp_path / "y").exists(), "a failed compile must not leave an artifact"


def test_stop_after_bisects_the_pipeline(tmp_path: Path) -> None:
    result = _sparsec(
        "compile", "examples.models:mlp", "--input", "2x64", "--out", str(tmp_path / "m"),
        "--backend", "torch", "--stop-after", "magnitude-importance",
    )
    assert result.returncode == 0, result.stderr
    assert "did not run: stopped after magnitude-importance" in result.stdout


def test_passes_and_presets_list() -> None:
    assert "prune-channels" in _sparsec("passes").stdout
    assert "structured-50" in _sparsec("presets").stdout


def test_run_on_random_inputs_and_float64_is_refused(artifact: Path, tmp_path: Path) -> None:
    result = _sparsec("run", str(artifact), "--random-input", "--dims", "batch=3")
    assert result.returncode == 0, result.stderr
    assert "output 0: shape [3, 10]" in result.stdout
    np.save(tmp_path / "x64.npy", np.zeros((2, 64)))
    result = _sparsec("run", str(artifact), "--input", str(tmp_path / "x64.npy"))
    assert (
        result.returncode == 1
        and "float64" in result.stderr
        and "astype" in " ".join(result.stderr.split())
    )


def test_bad_input_bound_and_factory_needing_arguments(tmp_path: Path) -> None:
    result = _sparsec(
        "compile",
        "examples.models:small_cnn",
        "--input",
        "2x3x32x32:int64:abc",
        "--out",
        str(tmp_path / "x"),
    )
    assert result.returncode == 1 and "must be an integer" in result.stderr
    result = _sparsec(
        "compile",
        "examples.models:_randomize_batch_norm",
        "--input",
        "2x64",
        "--out",
        str(tmp_path / "x"),
    )
    assert result.returncode == 1 and "cannot be called without arguments" in " ".join(
        result.stderr.split()
    )


def test_help_shows_no_type_for_flags() -> None:
    result = _sparsec("compile", "--help")
    assert (
        result.returncode == 0
        and "<bool>" not in result.stdout
        and "--calibration" in result.stdout
    )


def test_search_writes_results_and_a_plot(tmp_path: Path) -> None:
    (tmp_path / "searchdata.py").write_text(
        "import torch\n"
        "def batches():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return [torch.randn(8, 64, generator=g) for _ in range(4)]\n"
        "def model():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)\n"
        "    )\n"
    )
    out = tmp_path / "search"
    args = [
        "search",
        "searchdata:model",
        "--input",
        "2x64",
        "--calibration",
        "searchdata:batches",
        "--out",
        str(out),
        "--repeats",
        "5",
        "--time-budget",
        "1",
        "--engine",
        "sequential",
    ]
    first = _sparsec(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "| dense | 1.0000 | 0.00% |" in first.stdout  # the first candidate always starts
    assert "not started (time budget): dense+int8" in first.stdout
    assert (out / "search.json").exists() and (out / "search-pareto.png").exists()
