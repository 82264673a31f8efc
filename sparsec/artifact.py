"""Artifact directories: what a build ships, written atomically and read back only if intact.

Layout (every file but the manifest is listed in it with its sha256):
- `manifest.json`: format version; sparsec/torch/onnx/onnxruntime versions; target; backend
  and the metadata its executable needs to load; resolved pipeline; inputs (name, dtype,
  shape with dynamic dims named) and output names; files; a checksum of the manifest itself;
- `program.pt2` + `weights.safetensors`: the pruned torch program, pickle-free (see
  `sparsec.backends.torch_backend` for what torch.export.save/load unpickle and how we avoid it);
- the backend's files, e.g. `model.onnx`; `report.md` and `report.json`.

Rules:
- `write_artifact` fills a hidden temporary sibling and renames it into place, so a failure
  leaves nothing half-written and an existing artifact is replaced only by a complete one;
- a non-empty directory that is not an artifact is never overwritten;
- `read_artifact` checks the format version, the manifest checksum, and every file's
  presence and sha256 before it loads anything; any mismatch is an ArtifactError naming the
  file and the fix.

Example:
    write_artifact(Path("out/model"), graph=graph, executable=executable,
                   backend_name="onnxruntime", target="cpu", pipeline={}, report_markdown="",
                   report={})
    loaded = read_artifact(Path("out/model"))
    y = loaded(x)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import sparsec
from sparsec.backends.base import Executable, get_backend
from sparsec.backends.torch_backend import PROGRAM_FILE, WEIGHTS_FILE, load_program, save_program
from sparsec.errors import ArtifactError

if TYPE_CHECKING:
    from sparsec.ir.graph import Graph

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "REPORT_JSON_FILE",
    "REPORT_MARKDOWN_FILE",
    "LoadedArtifact",
    "read_artifact",
    "verify_artifact",
    "write_artifact",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REPORT_MARKDOWN_FILE = "report.md"
REPORT_JSON_FILE = "report.json"
_REQUIRED_FILES = (PROGRAM_FILE, WEIGHTS_FILE, REPORT_MARKDOWN_FILE, REPORT_JSON_FILE)
_FIX = "Fix: re-export the artifact (CompiledModel.save or sparsec.artifact.write_artifact)."
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LoadedArtifact:
    """An artifact read back: its manifest, the torch program, and the backend's executable."""

    directory: Path
    manifest: dict[str, Any]
    program: torch.nn.Module
    executable: Executable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.executable(*args, **kwargs)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its checksum field, in a canonical JSON form."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the {what} is not JSON-serialisable: {exc}") from exc


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _is_artifact(directory: Path) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest


def _check_replaceable(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory} exists and is not a directory; choose another path")
    if directory.is_dir() and any(directory.iterdir()) and not _is_artifact(directory):
        raise ArtifactError(
            f"refusing to overwrite {directory}: it is not empty and holds no sparsec artifact "
            f"({MANIFEST_FILE}). Fix: choose another directory or empty it first."
        )


def _fill(
    staging: Path,
    *,
    graph: Graph,
    executable: Executable,
    backend_name: str,
    target: str,
    pipeline: dict[str, Any],
    report_markdown: str,
    report: dict[str, Any],
) -> None:
    """Write every file and then the manifest into `staging`."""
    backend_metadata = executable.save(staging)
    files = set(executable.files())
    if PROGRAM_FILE not in files:
        files.update(save_program(graph.export_program(), staging))
    (staging / REPORT_MARKDOWN_FILE).write_text(report_markdown)
    (staging / REPORT_JSON_FILE).write_text(_json(report, "report"))
    files.update((REPORT_MARKDOWN_FILE, REPORT_JSON_FILE))
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "versions": {
            "sparsec": sparsec.__version__,
            "torch": torch.__version__,
            "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"),
            "python": sys.version.split()[0],
        },
        "target": target,
        "backend": backend_name,
        "backend_metadata": backend_metadata,
        "notes": list(executable.notes),
        "pipeline": pipeline,
        "inputs": [
            {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}
            for spec in graph.input_specs
        ],
        "outputs": list(graph.output_names),
        "files": {name: _sha256(staging / name) for name in sorted(files)},
    }
    _json(manifest, "manifest (pipeline or backend metadata)")
    manifest["checksum"] = _checksum(manifest)
    (staging / MANIFEST_FILE).write_text(_json(manifest, "manifest"))


def _swap_in(staging: Path, directory: Path) -> None:
    """Rename `staging` to `directory`; an existing one is moved aside until that succeeds."""
    if not directory.exists():
        os.replace(staging, directory)
        return
    retired = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(directory, retired)
    try:
        os.replace(staging, directory)
    except BaseException:
        os.replace(retired, directory)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def write_artifact(
    directory: Path,
    *,
    graph: Graph,
    executable: Executable,
    backend_name: str,
    target: str,
    pipeline: dict[str, Any],
    report_markdown: str,
    report: dict[str, Any],
) -> Path:
    """Write an artifact directory atomically (see module docstring); return its path."""
    directory = Path(directory)
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        _fill(
            staging,
            graph=graph,
            executable=executable,
            backend_name=backend_name,
            target=target,
            pipeline=pipeline,
            report_markdown=report_markdown,
            report=report,
        )
        _swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ArtifactError(f"no artifact at {directory}: not a directory")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing, so {directory} is not a readable artifact. {_FIX}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}). {_FIX}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object. {_FIX}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        writer = manifest.get("versions", {}).get("sparsec", "unknown")
        raise ArtifactError(
            f"{path} has format_version {version!r} (written by sparsec {writer}); this sparsec "
            f"{sparsec.__version__} reads format {FORMAT_VERSION}. Fix: re-export the artifact "
            "with this sparsec, or load it with the version that wrote it."
        )
    if manifest.get("checksum") != _checksum(manifest):
        raise ArtifactError(f"{path} was modified after it was written (checksum mismatch). {_FIX}")
    return manifest


def _verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{directory / MANIFEST_FILE} lists no files. {_FIX}")
    unlisted = [name for name in _REQUIRED_FILES if name not in files]
    if unlisted:
        raise ArtifactError(f"{directory / MANIFEST_FILE} does not list {unlisted}. {_FIX}")
    for name, digest in files.items():
        if Path(name).name != name or name.startswith("."):
            raise ArtifactError(f"{directory / MANIFEST_FILE} lists a file outside it: {name!r}")
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the artifact. {_FIX}")
        if _sha256(path) != digest:
            raise ArtifactError(
                f"{path} does not match its sha256 in {MANIFEST_FILE}: it was modified or "
                f"corrupted. {_FIX}"
            )


def verify_artifact(directory: str | Path) -> dict[str, Any]:
    """Check an artifact's manifest and every file's sha256 without loading anything."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    _verify_files(directory, manifest)
    return manifest


def read_artifact(directory: str | Path) -> LoadedArtifact:
    """Verify an artifact directory and load its torch program and backend executable."""
    directory = Path(directory)
    manifest = verify_artifact(directory)
    program = load_program(directory).module()
    backend = get_backend(str(manifest.get("backend")))
    executable = backend.load(directory, dict(manifest.get("backend_metadata") or {}))
    return LoadedArtifact(directory, manifest, program, executable)
