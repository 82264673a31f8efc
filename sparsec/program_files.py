"""A traced program on disk without pickle: `program.pt2` plus `weights.safetensors`.

The artifact layer saves every build's program with it; the torch and TVM backends reuse it.

What torch 2.13's `torch.export.save` / `torch.export.load` do (torch/export/pt2_archive/
_package.py, torch/_export/serde/serialize.py), and so why the saved form looks as it does:
- the archive is a zip: the graph as JSON (`models/model.json`), payload configs as JSON, and
  plain tensors as raw bytes (`data/weights/weight_N`, `data/constants/tensor_N`): no pickle;
- but the load path unpickles in four places: the example inputs (`data/sample_inputs/
  model.pt`: `torch.load(weights_only=True)`, then on failure *falls back to
  weights_only=False*), tensor-subclass weights and constants (`use_pickle: true`,
  a torch.load that allows arbitrary pickles), torchbind objects (`torch._C._pickle_load_obj`) and
  opaque objects (`pickle.loads`); legacy archives (`data/weights/model.pt`) likewise;
- so a .pt2 from an untrusted source can run code on `torch.export.load`.

The rules here:
- `save_program` writes `program.pt2` with the example inputs removed and every weight and
  tensor constant replaced by a one-element stride-0 placeholder of the same shape and dtype
  (the archive stays small), and the real tensors to `weights.safetensors` (tied tensors are
  stored once and recorded as aliases);
- `load_program` opens `program.pt2` as a zip first and refuses it (ArtifactError) unless
  every entry is on an allow-list, every payload says `use_pickle: false`, constants are
  plain tensors and the example inputs are empty; only then is `torch.export.load` called,
  which on such an archive unpickles nothing; the weights come from safetensors, which
  never unpickles.

Example:
    save_program(graph.export_program(), directory)
    module = load_program(directory).module()
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch.export import ExportedProgram
from torch.export.pt2_archive import constants as pt2

from sparsec.errors import ArtifactError, BackendError
from sparsec.ops import bsr_linear  # noqa: F401 - registers torch.ops.sparsec for torch.export.load

__all__ = ["PROGRAM_FILE", "WEIGHTS_FILE", "load_program", "save_program"]

PROGRAM_FILE = "program.pt2"
WEIGHTS_FILE = "weights.safetensors"

_MODEL = "model"
_CONSTANT_PREFIX = "constant:"  # safetensors key prefix; no parameter FQN contains ':'
_ALIASES_KEY = "sparsec.aliases"
_FIX = "re-export the artifact with sparsec"
_ALLOWED_ENTRIES = re.compile(
    "|".join(
        re.escape(name)
        for name in (
            pt2.ARCHIVE_FORMAT_PATH,
            pt2.ARCHIVE_VERSION_PATH,
            "byteorder",
            ".data/version",
            ".data/serialization_id",
            pt2.MODELS_FILENAME_FORMAT.format(_MODEL),
            pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL),
            pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL),
            pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL),
        )
    )
    + f"|{re.escape(pt2.WEIGHTS_DIR + pt2.WEIGHT_FILENAME_PREFIX)}\\d+"
    + f"|{re.escape(pt2.CONSTANTS_DIR + pt2.TENSOR_CONSTANT_FILENAME_PREFIX)}\\d+"
)


def _placeholder(tensor: torch.Tensor) -> torch.Tensor:
    """A stride-0 tensor with `tensor`'s shape and dtype that stores a single element."""
    # an empty tensor is its own placeholder (torch's pt2 writer rejects empty stride-0 views)
    stub = (
        torch.zeros((), dtype=tensor.dtype).expand(tensor.shape)
        if tensor.numel()
        else torch.empty(tensor.shape, dtype=tensor.dtype)
    )
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(stub, requires_grad=tensor.requires_grad)
    return stub


def _program_tensors(program: ExportedProgram) -> dict[str, torch.Tensor]:
    """Weights by FQN and tensor constants by `constant:<name>`: what safetensors stores."""
    tensors = dict(program.state_dict)
    for name, value in program.constants.items():
        if not isinstance(value, torch.Tensor):
            raise BackendError(
                f"program constant {name!r} is a {type(value).__name__}, not a tensor; only "
                "tensors can be saved without pickle. Fix: make it a buffer of the model."
            )
        tensors[_CONSTANT_PREFIX + name] = value
    return tensors


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors once each; a name that aliases another is recorded in the metadata."""
    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, value in tensors.items():
        tensor = value.detach()
        if tensor.is_meta or tensor.layout != torch.strided or type(tensor) is not torch.Tensor:
            raise BackendError(
                f"tensor {name!r} ({type(value).__name__}, {tensor.layout}, device "
                f"{tensor.device}) cannot be saved to safetensors; materialise it as a dense "
                "tensor first"
            )
        pointer = tensor.untyped_storage().data_ptr()
        view = (
            pointer,
            tensor.storage_offset(),
            tuple(tensor.shape),
            tensor.stride(),
            tensor.dtype,
        )
        if pointer and view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        if (pointer and pointer in storages) or not tensor.is_contiguous():
            tensor = tensor.contiguous() if not tensor.is_contiguous() else tensor.clone()
        storages.add(pointer)
        stored[name] = tensor.cpu()
    # bytes written by Python: the file gets the usual mode (save_file makes it 0600) and a
    # failed write is a plain OSError
    path.write_bytes(save(stored, metadata={_ALIASES_KEY: json.dumps(aliases, sort_keys=True)}))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    for name, target in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        tensors[name] = tensors[target]
    return tensors


def save_program(program: ExportedProgram, directory: Path) -> tuple[str, ...]:
    """Write `program.pt2` (structure only) and `weights.safetensors`; return the file names."""
    tensors = _program_tensors(program)
    state_dict, constants = dict(program.state_dict), dict(program.constants)
    example_inputs = program.example_inputs
    try:
        program.example_inputs = None
        for name, value in state_dict.items():
            program.state_dict[name] = _placeholder(value)
        for name, value in constants.items():
            program.constants[name] = _placeholder(value)
        with warnings.catch_warnings():
            # stride-0 placeholders make torch warn that no tensor covers the storage.
            warnings.simplefilter("ignore")
            # into memory first: torch's file writer aborts the process when a write fails
            # (disk full); a Python write raises OSError, which the artifact writer reports
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
    finally:
        program.state_dict.update(state_dict)
        program.constants.update(constants)
        program.example_inputs = example_inputs
    (directory / PROGRAM_FILE).write_bytes(buffer.getvalue())
    _write_safetensors(tensors, directory / WEIGHTS_FILE)
    return (PROGRAM_FILE, WEIGHTS_FILE)


def _check_no_pickle(path: Path) -> None:
    """Refuse any archive that `torch.export.load` would unpickle something from."""

    def refuse(why: str) -> ArtifactError:
        return ArtifactError(f"{path}: {why}; sparsec loads no pickled data. Fix: {_FIX}.")

    try:
        with zipfile.ZipFile(path) as archive:
            entries = {
                info.filename.split("/", 1)[-1]: info
                for info in archive.infolist()
                if not info.is_dir()
            }
            for name, info in entries.items():
                if not _ALLOWED_ENTRIES.fullmatch(name):
                    raise refuse(f"unexpected archive entry {name!r}")
                if name.startswith(pt2.SAMPLE_INPUTS_DIR) and info.file_size:
                    raise refuse("the archive holds pickled example inputs")
            configs = [
                pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL),
                pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL),
            ]
            for config_name in configs:
                if config_name not in entries:
                    raise refuse(f"the archive lacks {config_name}")
                config = json.loads(archive.read(entries[config_name])).get("config", {})
                for fqn, payload in config.items():
                    pickled = payload.get("use_pickle", True)
                    plain = str(payload.get("path_name", "")).startswith(
                        (pt2.WEIGHT_FILENAME_PREFIX, pt2.TENSOR_CONSTANT_FILENAME_PREFIX)
                    )
                    if pickled or not plain:
                        raise refuse(f"{fqn!r} is stored as a pickled object")
    except (zipfile.BadZipFile, json.JSONDecodeError, AttributeError) as exc:
        raise refuse(f"not a readable .pt2 archive ({exc})") from exc


# Output classes that register themselves as pytree nodes only when their module is
# imported (transformers' ModelOutput subclasses, defined lazily): the call structure of
# a saved program names them, and torch.export.load cannot rebuild it until they exist.
_SELF_REGISTERING_TYPE = re.compile(r'type\\*"\s*:\s*\\*"(transformers(?:\.\w+)+)\.\w+')


def _import_structure_types(path: Path) -> None:
    """Import the modules of the self-registering types the archive's call structure names.

    Only modules of those packages are imported (never a name the archive could choose
    freely), and only when the package is installed; a missing one leaves torch's own error.
    """
    with zipfile.ZipFile(path) as archive:
        modules = {
            match.group(1)
            for info in archive.infolist()
            if info.filename.endswith(".json")
            for match in _SELF_REGISTERING_TYPE.finditer(archive.read(info).decode(errors="ignore"))
        }
    for module in sorted(modules):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def load_program(directory: Path) -> ExportedProgram:
    """Load `program.pt2` without unpickling and put the safetensors weights back into it."""
    path = directory / PROGRAM_FILE
    _check_no_pickle(path)
    _import_structure_types(path)
    try:
        program = torch.export.load(path)
    except Exception as exc:  # the deserializer raises many types; all mean "unreadable"
        raise ArtifactError(f"{path}: torch.export.load failed: {exc}. Fix: {_FIX}.") from exc
    tensors = _read_safetensors(directory / WEIGHTS_FILE)
    expected = _program_tensors(program)
    if set(tensors) != set(expected):
        raise ArtifactError(
            f"{directory / WEIGHTS_FILE} does not match {PROGRAM_FILE}: missing "
            f"{sorted(set(expected) - set(tensors))}, unexpected "
            f"{sorted(set(tensors) - set(expected))}. Fix: {_FIX}."
        )
    parameters: dict[int, torch.nn.Parameter] = {}  # one Parameter per stored tensor: ties survive
    for name, stub in expected.items():
        tensor = tensors[name]
        if tensor.shape != stub.shape or tensor.dtype != stub.dtype:
            raise ArtifactError(
                f"{WEIGHTS_FILE}: {name!r} is {tuple(tensor.shape)} {tensor.dtype}, the program "
                f"expects {tuple(stub.shape)} {stub.dtype}. Fix: {_FIX}."
            )
        if name.startswith(_CONSTANT_PREFIX):
            program.constants[name.removeprefix(_CONSTANT_PREFIX)] = tensor
        elif isinstance(stub, torch.nn.Parameter):
            if id(tensor) not in parameters:
                parameters[id(tensor)] = torch.nn.Parameter(
                    tensor, requires_grad=stub.requires_grad
                )
            program.state_dict[name] = parameters[id(tensor)]
        else:
            program.state_dict[name] = tensor
    return program


