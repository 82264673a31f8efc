"""Artifact directories: what a build ships, written atomically and read back only if intact.

Layout (every file but the manifest is listed in it with its sha256):
- `manifest.json`: format version; sparsec/torch/onnx/onnxruntime versions; target; backend
  and the metadata its executable needs to load; resolved pipeline; inputs (name, dtype,
  shape with dynamic dims named) and output names; files; a checksum of the manifest itself;
- `program.pt2` + `weights.safetensors`: the pruned torch program, pickle-free (see
  `sparsec.program_files` for what torch.export.save/load unpickle and how we avoid it);
- the backend's files, e.g. `model.onnx`; `report.md` and `report.json`; the report's pictures
  (`widths.png`, `sparsity.png`: `sparsec.report_plots`), linked from `report.md`.

Rules:
- a save writes a complete new version into `versions/<time>-<pid>-<id>/` (manifest last),
  then, holding the artifact's lock (`.sparsec.lock`), points the `current` symlink at it
  with an atomic rename and removes the version it replaced; top-level links
  (`model.onnx -> current/model.onnx`, ...) keep the files where tools look for them;
- so readers see one whole version, old or new, never a mix: `read_artifact` resolves
  `current` once and starts again if a save switched versions while it read;
- a failed save (disk full, read-only directory) raises ArtifactError naming the path and
  the cause and leaves the previous version current; a killed save's version is removed by
  the next save or load (its writer's pid is gone);
- sparsec deletes only what it wrote: its versions, its links, and the files a pre-versioning
  (flat) artifact's manifest lists; a non-empty directory that is not an artifact is refused;
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

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import sparsec
from sparsec.backends.base import Executable, get_backend
from sparsec.errors import ArtifactError
from sparsec.program_files import PROGRAM_FILE, WEIGHTS_FILE, load_program, save_program
from sparsec.report_plots import missing_reason, write_report_plots
from sparsec.signature import check_inputs, input_specs_from_manifest

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
_CURRENT = "current"  # symlink to versions/<id>, replaced atomically
_VERSIONS = "versions"
_LOCK = ".sparsec.lock"
_READ_ATTEMPTS = 5
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
        check_inputs(input_specs_from_manifest(self.manifest.get("inputs", [])), args, kwargs)
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
    if (directory / _CURRENT).is_symlink() or (directory / _VERSIONS).is_dir():
        return True
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


def _files_root(directory: Path) -> Path:
    """The folder holding the current version's files (the directory itself if flat)."""
    link = directory / _CURRENT
    if link.is_symlink():
        return directory / _VERSIONS / Path(os.readlink(link)).name
    return directory


@contextlib.contextmanager
def _locked(directory: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the artifact's lock (writers switching versions); yields False if not taken."""
    try:
        handle = (directory / _LOCK).open("a")
    except OSError:
        yield False  # a read-only artifact: nothing to switch or clean
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _writer_alive(version: Path) -> bool:
    """Whether the process that wrote `version` (its pid is in the name) still runs."""
    try:
        pid = int(version.name.split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(directory: Path) -> None:
    """Remove versions that are not current and whose writer died (killed saves)."""
    current = _files_root(directory)
    versions = directory / _VERSIONS
    for version in versions.iterdir() if versions.is_dir() else ():
        if version != current and not _writer_alive(version):
            shutil.rmtree(version, ignore_errors=True)


def _link(directory: Path, name: str, target: str) -> None:
    """Point `directory/name` at `target` atomically (a new link renamed over the old)."""
    temporary = directory / f".{name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(target, temporary)
    os.replace(temporary, directory / name)


def _switch_to(directory: Path, version: Path, files: list[str]) -> None:
    """Make `version` current; update the convenience links; drop what the old one owned."""
    previous = _files_root(directory)
    flat = previous == directory and (directory / MANIFEST_FILE).is_file() and not (directory / MANIFEST_FILE).is_symlink()
    legacy = list(json.loads((directory / MANIFEST_FILE).read_text()).get("files", {})) if flat else []
    _link(directory, _CURRENT, f"{_VERSIONS}/{version.name}")
    for name in [*legacy, MANIFEST_FILE] if flat else []:
        (directory / name).unlink(missing_ok=True)  # a flat artifact's own files only
    for entry in directory.iterdir():
        if entry.is_symlink() and os.readlink(entry).startswith(f"{_CURRENT}/") and entry.name not in files:
            entry.unlink()
    for name in files:
        _link(directory, name, f"{_CURRENT}/{name}")
    if previous != directory:
        shutil.rmtree(previous, ignore_errors=True)


def _picture_links(pictures: list[str]) -> str:
    """The report's pictures as Markdown, or why there are none."""
    if pictures:
        return "\n## Pictures\n\n" + "".join(f"![{name[:-4]}]({name})\n\n" for name in pictures)
    reason = missing_reason()
    return f"\nNo pictures: {reason}.\n" if reason else ""


@contextlib.contextmanager
def _new_version(directory: Path) -> Iterator[Path]:
    """A fresh version directory to fill; on leaving the block, switch the artifact to it.

    Any failure, in the block or in the switch, removes what was written and leaves the
    artifact as it was (see module docstring).
    """
    _check_replaceable(directory)
    created = not directory.exists()
    version = directory / _VERSIONS / f"{time.time_ns():x}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        version.mkdir(parents=True)  # modes from the umask, like every file in it
        yield version
        files = sorted(p.name for p in version.iterdir())
        with _locked(directory):
            _clean_stale(directory)
            _switch_to(directory, version, files)
    except BaseException as exc:
        shutil.rmtree(directory if created else version, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ArtifactError(
                f"could not write the artifact {directory}: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}. The artifact that was there, "
                "if any, is unchanged."
            ) from exc
        raise


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
    """Write a new version of the artifact and switch to it (see module docstring).

    Every file is written first, the manifest last.
    """
    directory = Path(directory)
    with _new_version(directory) as staging:
        backend_metadata = executable.save(staging)
        files = set(executable.files())
        if PROGRAM_FILE not in files:
            files.update(save_program(graph.export_program(), staging))
        pictures = write_report_plots(report, staging) if report else []
        (staging / REPORT_MARKDOWN_FILE).write_text(report_markdown + _picture_links(pictures))
        (staging / REPORT_JSON_FILE).write_text(_json(report, "report"))
        files.update((REPORT_MARKDOWN_FILE, REPORT_JSON_FILE, *pictures))
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
    root = _files_root(Path(directory))
    manifest = _read_manifest(root)
    _verify_files(root, manifest)
    return manifest


def _load(root: Path) -> LoadedArtifact:
    manifest = _read_manifest(root)
    _verify_files(root, manifest)
    program = load_program(root).module()
    backend = get_backend(str(manifest.get("backend")))
    executable = backend.load(root, dict(manifest.get("backend_metadata") or {}))
    return LoadedArtifact(root, manifest, program, executable)


def read_artifact(directory: str | Path) -> LoadedArtifact:
    """Verify the artifact's current version and load its program and executable.

    A save that switches versions while this reads makes it start again on the new
    version (a few times at most), so the result is one whole version, never a mix.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"no artifact at {directory}: not a directory")
    with _locked(directory, wait=False) as locked:
        if locked:
            _clean_stale(directory)
    for attempt in range(_READ_ATTEMPTS):
        root = _files_root(directory)
        try:
            return _load(root)
        except Exception as exc:  # files vanish under readers in many ways (OSError, safetensors' RuntimeError)
            if _files_root(directory) != root and attempt + 1 < _READ_ATTEMPTS:
                continue  # a writer switched versions under us: read the new one
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"could not read the artifact {directory}: {exc}") from exc
    raise AssertionError("unreachable")
