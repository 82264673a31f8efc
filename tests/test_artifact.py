"""Artifacts round-trip, load nothing pickled, refuse tampering, and are written atomically."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from models import SmallCNN
from torch import nn
from torch.utils import _pytree as pytree
from zoo import ZOO, hf_available

import sparsec
import sparsec.artifact as artifact_module
from sparsec.artifact import FORMAT_VERSION, MANIFEST_FILE, read_artifact, write_artifact
from sparsec.backends.base import BackendOptions, Executable, get_backend
from sparsec.errors import ArtifactError
from sparsec.frontends import trace
from sparsec.ir.graph import Graph
from sparsec.program_files import PROGRAM_FILE, WEIGHTS_FILE, load_program

ATOL = 1e-4


class TiedMLP(nn.Module):
    """An MLP whose two layers share one weight, to check tied tensors survive the round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc2.weight = self.fc1.weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.relu(self.fc1(x))
        return {"out": self.fc2(hidden), "hidden": hidden}


def _close(actual: Any, expected: Any) -> None:
    flat_actual, spec_actual = pytree.tree_flatten(actual)
    flat_expected, spec_expected = pytree.tree_flatten(expected)
    assert spec_actual == spec_expected
    for a, e in zip(flat_actual, flat_expected, strict=True):
        torch.testing.assert_close(a, e.detach(), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def cnn() -> tuple[Graph, Executable]:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 1.5)
    graph = trace(model, (torch.randn(2, 3, 16, 16),))
    return graph, get_backend("onnxruntime").lower(graph, "cpu", BackendOptions())


def _write(directory: Path, graph: Graph, executable: Executable, backend: str) -> Path:
    return write_artifact(
        directory,
        graph=graph,
        executable=executable,
        backend_name=backend,
        target="cpu",
        pipeline={"passes": [{"name": "prune-channels", "amount": 0.5}]},
        report_markdown="# report\n",
        report={"params_before": 10, "params_after": 5},
    )


@pytest.fixture
def cnn_artifact(cnn: tuple[Graph, Executable], tmp_path: Path) -> Path:
    graph, executable = cnn
    return _write(tmp_path / "model", graph, executable, "onnxruntime")


def test_onnxruntime_round_trip_at_another_batch(cnn, cnn_artifact: Path) -> None:
    graph, _ = cnn
    loaded = read_artifact(cnn_artifact)
    for batch in (2, 7):
        x = torch.randn(batch, 3, 16, 16)
        expected = graph.module(x)
        _close(loaded(x), expected)
        _close(loaded.program(x), expected)
    files = [MANIFEST_FILE, "model.onnx", PROGRAM_FILE, WEIGHTS_FILE, "report.md", "report.json"]
    assert sorted(p.name for p in (cnn_artifact / "current").iterdir()) == sorted(files)
    assert sorted(p.name for p in cnn_artifact.iterdir()) == sorted(
        [*files, ".sparsec.lock", "current", "versions"]
    )


def test_manifest_describes_the_build(cnn_artifact: Path) -> None:
    manifest = read_artifact(cnn_artifact).manifest
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["backend"] == "onnxruntime" and manifest["target"] == "cpu"
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert manifest["outputs"] == ["output_0"]
    assert manifest["pipeline"]["passes"][0]["name"] == "prune-channels"
    assert set(manifest["versions"]) >= {"sparsec", "torch", "onnx", "onnxruntime"}
    assert set(manifest["files"]) == {
        "model.onnx",
        PROGRAM_FILE,
        WEIGHTS_FILE,
        "report.md",
        "report.json",
    }
    assert json.loads((cnn_artifact / "report.json").read_text())["params_after"] == 5


def test_torch_backend_round_trip_keeps_tied_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    graph = trace(TiedMLP().eval(), (torch.randn(3, 12),))
    executable = get_backend("torch").lower(graph, "cpu", BackendOptions(threads=1))
    directory = _write(tmp_path / "mlp", graph, executable, "torch")
    loaded = read_artifact(directory)
    x = torch.randn(5, 12)
    _close(loaded(x), graph.module(x))
    _close(loaded.program(x), graph.module(x))
    parameters = dict(loaded.program.named_parameters(remove_duplicate=False))
    assert parameters["fc1.weight"] is parameters["fc2.weight"]


def test_loading_unpickles_nothing(cnn, cnn_artifact: Path, monkeypatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", refuse)
    loaded = read_artifact(cnn_artifact)
    x = torch.randn(3, 3, 16, 16)
    _close(loaded.program(x), cnn[0].module(x))


def test_program_archive_holds_no_weights_or_pickles(cnn_artifact: Path) -> None:
    with zipfile.ZipFile(cnn_artifact / PROGRAM_FILE) as archive:
        sizes = {info.filename.split("/", 1)[1]: info.file_size for info in archive.infolist()}
    assert sizes["data/sample_inputs/model.pt"] == 0
    assert all(size <= 8 for name, size in sizes.items() if name.startswith("data/weights/weight_"))


def test_a_pt2_with_pickled_payloads_is_refused(cnn, tmp_path: Path) -> None:
    graph, _ = cnn
    torch.export.save(graph.export_program(), tmp_path / PROGRAM_FILE)  # keeps example inputs
    with pytest.raises(ArtifactError, match="pickled example inputs"):
        load_program(tmp_path)


@pytest.mark.parametrize("name", ["model.onnx", WEIGHTS_FILE, PROGRAM_FILE, "report.json"])
def test_a_modified_file_is_named(cnn_artifact: Path, name: str) -> None:
    path = cnn_artifact / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{name}.*re-export the artifact"):
        read_artifact(cnn_artifact)


def test_a_modified_manifest_is_refused(cnn_artifact: Path) -> None:
    path = cnn_artifact / MANIFEST_FILE
    text = path.read_text()
    assert '"target": "cpu"' in text
    path.write_text(text.replace('"target": "cpu"', '"target": "cpv"'))
    with pytest.raises(ArtifactError, match="manifest.json was modified"):
        read_artifact(cnn_artifact)


def test_a_missing_file_is_named(cnn_artifact: Path) -> None:
    (cnn_artifact / "current" / "report.md").unlink()  # the file itself, not its link
    with pytest.raises(ArtifactError, match=r"report\.md is missing.*re-export"):
        read_artifact(cnn_artifact)


def test_a_missing_manifest_is_refused(cnn_artifact: Path) -> None:
    (cnn_artifact / "current" / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        read_artifact(cnn_artifact)


def test_unknown_format_version_is_refused(cnn_artifact: Path) -> None:
    path = cnn_artifact / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 2"):
        read_artifact(cnn_artifact)


def _fail_midway(monkeypatch) -> None:
    """Make hashing (after every data file is written, before the manifest) fail."""

    def broken(path: Path) -> str:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(artifact_module, "_sha256", broken)


def test_a_failed_write_leaves_nothing(cnn, tmp_path: Path, monkeypatch) -> None:
    graph, executable = cnn
    _fail_midway(monkeypatch)
    with pytest.raises(ArtifactError, match="injected"):
        _write(tmp_path / "model", graph, executable, "onnxruntime")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_previous_artifact(cnn, cnn_artifact: Path, monkeypatch) -> None:
    graph, executable = cnn

    def contents() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in cnn_artifact.iterdir() if p.is_file()}

    before, version = contents(), (cnn_artifact / "current").resolve()
    _fail_midway(monkeypatch)
    with pytest.raises(ArtifactError, match="injected"):
        _write(cnn_artifact, graph, executable, "onnxruntime")
    monkeypatch.undo()
    assert contents() == before and (cnn_artifact / "current").resolve() == version
    assert [p.name for p in (cnn_artifact / "versions").iterdir()] == [version.name]
    assert [p.name for p in cnn_artifact.parent.iterdir()] == [cnn_artifact.name]
    read_artifact(cnn_artifact)


def test_an_artifact_is_replaced_by_a_new_one_keeping_user_files(cnn, cnn_artifact: Path) -> None:
    graph, executable = cnn
    (cnn_artifact / "notes.txt").write_text("the user's")
    old = (cnn_artifact / "current").resolve()
    _write(cnn_artifact, graph, executable, "onnxruntime")
    assert (cnn_artifact / "notes.txt").read_text() == "the user's"
    assert (cnn_artifact / "current").resolve() != old and not old.exists()
    assert [p.name for p in cnn_artifact.parent.iterdir()] == [cnn_artifact.name]
    read_artifact(cnn_artifact)


def test_a_foreign_directory_is_never_overwritten(cnn, tmp_path: Path) -> None:
    graph, executable = cnn
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        _write(target, graph, executable, "onnxruntime")
    assert [p.name for p in target.iterdir()] == ["holiday.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


@pytest.mark.skipif(not hf_available("LlamaForCausalLM"), reason="transformers is not installed")
def test_a_hugging_face_artifact_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """ModelOutput classes register as pytree nodes only once their module is imported."""
    model, inputs = ZOO["llama-gqa"].build()
    # every backend's artifact holds the torch program whose call structure names the type
    compiled = sparsec.compile(model, inputs, pipeline="none", backend="torch")
    saved = compiled.save(tmp_path / "llama")
    code = (
        "import sys, torch, sparsec\n"
        "loaded = sparsec.load(sys.argv[1])\n"
        "out = loaded(input_ids=torch.zeros(1, 8, dtype=torch.long))\n"
        "print(type(out).__name__, tuple(out.logits.shape))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(saved)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CausalLMOutputWithPast (1, 8, " in done.stdout
