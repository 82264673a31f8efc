"""Pipeline files (TOML or YAML) and pipeline text, validated into frozen pass objects.

Rules:
- a file has `target` ("cpu" | "cuda"), an optional `backend`, an optional
  `backend_options` table and a list of `passes`, each a table with the pass `name` and its
  options;
- `backend_options` are checked against the named backend's options class (`TvmOptions` for
  "tvm"; "onnxruntime" and "torch" take none) and become that typed object; the class is
  imported only when a table is given, so tvm is imported only for `backend = "tvm"`;
- every problem is reported at once, each as `file:line: passes[1].ratio: what is wrong;
  what would be right` (a nearest valid name, the valid names, or the expected type);
- pydantic does the value checks (the pass classes own their options); its errors are
  rewritten in these terms, never shown raw;
- `dump_pipeline` writes what `load_pipeline` reads back, and `parse_pipeline_text` reads
  what `str(pipeline)` prints.

Example (pipeline.toml):
    target = "cpu"
    backend = "tvm"
    [backend_options]
    mode = "relax"
    [[passes]]
    name = "magnitude-importance"
    norm = 2
    [[passes]]
    name = "prune-channels"
    ratio = 0.5
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sparsec.backends.base import (
    TARGETS,
    available_backends,
    backend_options_class,
    backends_with_options,
)
from sparsec.config._locate import FieldPath, Locator, toml_locator, yaml_locator
from sparsec.config._option_types import coerce_value, describe_option, field_types, option_names
from sparsec.config._pipeline_text import parse_text
from sparsec.config._suggest import did_you_mean, unknown_choice
from sparsec.errors import ConfigError, PassOptionError, SparsecError
from sparsec.pipeline import Pass, Pipeline, options_dict, registry

__all__ = [
    "SUFFIXES",
    "backend_options_from_dict",
    "backend_options_type",
    "dump_pipeline",
    "load_pipeline",
    "parse_pipeline_text",
    "pipeline_from_dict",
    "registered_passes",
]

SUFFIXES: tuple[str, ...] = (".toml", ".yaml", ".yml")
_TOP_LEVEL: tuple[str, ...] = ("target", "backend", "backend_options", "passes")

_Position = Callable[[FieldPath], str | None]
"""Where a field is in the source, as `line` or `line:column`, or None when unknown."""


def registered_passes() -> Mapping[str, type[Pass]]:
    """Every pass class by name, after importing `sparsec.passes` so the built-ins register."""
    importlib.import_module("sparsec.passes")
    return registry


def pipeline_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Pipeline:
    """Validate plain data (as read from a file) into a Pipeline; `source` names it in errors.

    `Pipeline.to_dict()` reads back too: its `text` entry (a copy of the passes) is ignored.
    """
    if isinstance(data, Mapping) and "text" in data:
        data = {k: v for k, v in data.items() if k != "text"}
    return _validate(data, source, lambda path: None)


def backend_options_type(backend: str) -> type | None:
    """The options class of `backend` (`TvmOptions` for "tvm"), or None when it takes none.

    Importing the class imports the backend (tvm for "tvm"); ConfigError when it is missing.
    """
    if problem := unknown_choice("backend", backend, available_backends()):
        raise ConfigError(problem)
    try:
        return backend_options_class(backend)
    except ImportError as exc:
        raise ConfigError(
            f"backend {backend!r} cannot be imported ({exc}), so its options cannot be "
            f"checked. Fix: pip install 'sparsec[{backend}]', or drop the backend options"
        ) from exc


def backend_options_from_dict(
    backend: str | None, data: Mapping[str, Any] | None, source: str = "backend_options"
) -> Any:
    """Validate plain `data` into `backend`'s options object (None when `data` is empty).

    Errors read like the file's: `--backend-option: backend_options.tune_trial: unknown option
    'tune_trial' of backend 'tvm'; did you mean 'tune_trials'?`.
    """
    problems = _Problems(source, lambda path: None)
    if backend is not None and (problem := unknown_choice("backend", backend, available_backends())):
        problems.add(("backend",), problem)
    options = _build_backend_options(data, backend, problems)
    problems.raise_if_any()
    return options


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate a `.toml`, `.yaml` or `.yml` pipeline file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: a pipeline file must end in {', '.join(SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"pipeline file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file: {exc}") from exc
    data, locate = _read_toml(text, path) if suffix == ".toml" else _read_yaml(text, path)
    return _validate(data, str(path), _lines(locate))


def parse_pipeline_text(
    text: str,
    *,
    target: str = "cpu",
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Read the text form, `magnitude-importance{norm=1},prune-channels{ratio=0.3}`.

    The text holds the passes only; `target`, `backend` and `backend_options` (plain data,
    as in a file's table or `Pipeline.to_dict()`) come alongside.
    """
    parsed = parse_text(text)
    data = {**parsed.data, "target": target, "backend": backend, "backend_options": backend_options}

    def position(path: FieldPath) -> str | None:
        column = parsed.columns.get(path)
        return None if column is None else f"1:{column}"

    return _validate(data, "<pipeline text>", position)


def dump_pipeline(pipeline: Pipeline, path: str | Path) -> None:
    """Write a pipeline as TOML or YAML (by suffix) so `load_pipeline` reads it back equal."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"{path}: a pipeline file must end in {', '.join(SUFFIXES)}")
    toml = suffix == ".toml"
    data: dict[str, Any] = {"target": pipeline.target}
    if pipeline.backend is not None:
        data["backend"] = pipeline.backend
    if pipeline.backend_options is not None:
        data["backend_options"] = _backend_options_data(pipeline.backend_options, toml)
    data["passes"] = [{"name": p.name, **_pass_options(p, toml)} for p in pipeline.passes]
    header = f"# sparsec {pipeline}\n"
    if toml:
        body = _toml_document(data)
    else:
        try:
            body = yaml.safe_dump(data, sort_keys=False)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: cannot write the pipeline as YAML: {exc}") from exc
    path.write_text(header + body, encoding="utf-8")


def _lines(locate: Locator) -> _Position:
    def position(path: FieldPath) -> str | None:
        line = locate(path)
        return None if line is None else str(line)

    return position


def _read_toml(text: str, path: Path) -> tuple[Any, Locator]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise ConfigError(f"{where}: TOML syntax error: {exc}") from None
    return data, toml_locator(text)


def _read_yaml(text: str, path: Path) -> tuple[Any, Locator]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError(f"{where}: YAML syntax error: {exc.problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None
    return ({} if data is None else data), yaml_locator(text)


class _Problems:
    """Collects every problem of one source, each with its position, and raises them together."""

    def __init__(self, source: str, position: _Position) -> None:
        self.source = source
        self.position = position
        self.messages: list[str] = []

    def add(self, path: FieldPath, what: str) -> None:
        where = next((p for n in range(len(path), 0, -1) if (p := self.position(path[:n]))), None)
        prefix = f"{self.source}:{where}" if where else self.source
        self.messages.append(f"{prefix}: {_field_name(path)}: {what}")

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise ConfigError(self.messages[0])
        if self.messages:
            raise ConfigError(
                f"{len(self.messages)} problems in {self.source}:\n" + "\n".join(self.messages)
            )


def _field_name(path: FieldPath) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(
        "."
    )


def _validate(data: Any, source: str, position: _Position) -> Pipeline:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the top level must be a table of {', '.join(_TOP_LEVEL)}, got {type(data).__name__}"
        )
    problems = _Problems(source, position)
    for key in data:
        if key not in _TOP_LEVEL:
            problems.add(
                (str(key),), f"unknown top-level key {key!r}; {did_you_mean(str(key), _TOP_LEVEL)}"
            )
    target = data.get("target", "cpu")
    if problem := unknown_choice("target", target, TARGETS):
        problems.add(("target",), problem)
    backend = data.get("backend")
    if backend is not None and (problem := unknown_choice("backend", backend, available_backends())):
        problems.add(("backend",), problem)
    entries = data.get("passes", [])
    if not isinstance(entries, list):
        problems.add(
            ("passes",),
            f"must be a list of pass tables ([[passes]] in TOML, '- name: ...' in YAML), got {type(entries).__name__}",
        )
        entries = []
    passes = [_build_pass(entry, index, problems) for index, entry in enumerate(entries)]
    options = _build_backend_options(data.get("backend_options"), backend, problems)
    problems.raise_if_any()
    return Pipeline(
        [p for p in passes if p is not None],
        target=target,
        backend=backend,
        backend_options=options,
    )


def _build_backend_options(raw: Any, backend: Any, problems: _Problems) -> Any:
    """The typed options object for `backend` from the `backend_options` table, or None."""
    path: FieldPath = ("backend_options",)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        problems.add(
            path,
            "must be a table of the backend's options ([backend_options] in TOML, "
            f"'backend_options:' with indented keys in YAML), got {type(raw).__name__}",
        )
        return None
    if not raw:
        return None  # an empty table sets nothing
    with_options = ", ".join(repr(name) for name in backends_with_options())
    if backend is None:
        problems.add(
            path,
            "backend options need a backend: name it (`backend = \"tvm\"` at the top of "
            "a pipeline file, `--backend tvm` on the command line, `backend=\"tvm\"` in "
            f"compile()); backends with options: {with_options}",
        )
        return None
    if not isinstance(backend, str) or backend not in available_backends():
        return None  # the backend itself is already reported
    try:
        cls = backend_options_type(backend)
    except ConfigError as exc:
        problems.add(path, str(exc))
        return None
    if cls is None:
        problems.add(
            path,
            f"backend {backend!r} takes no options; remove the backend_options table "
            f"(backends with options: {with_options})",
        )
        return None
    types = field_types(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key)
        if key not in types:
            hint = (
                "; top-level keys go before the first table" if key in _TOP_LEVEL else ""
            )
            problems.add(
                (*path, key),
                f"unknown option {key!r} of backend {backend!r}; {did_you_mean(key, types)}{hint}",
            )
            continue
        try:
            values[key] = coerce_value(types[key], value)
        except ValueError as exc:
            problems.add((*path, key), str(exc))
    if len(values) < len(raw):
        return None
    try:
        return cls(**values)
    except (SparsecError, TypeError, ValueError) as exc:
        # the class checks ranges and combinations; point at the first field it names
        message = str(exc)
        named = [(message.find(key), key) for key in values if re.search(rf"\b{key}\b", message)]
        where = (*path, min(named)[1]) if named else path
        problems.add(where, f"backend {backend!r} rejected its options: {message}")
    return None


def _build_pass(entry: Any, index: int, problems: _Problems) -> Pass | None:
    path: FieldPath = ("passes", index)
    known = registered_passes()
    if not isinstance(entry, Mapping):
        problems.add(path, f"expected a table with a 'name' and options, got {entry!r}")
        return None
    name = entry.get("name")
    if not isinstance(name, str):
        what = (
            "missing the pass 'name'"
            if name is None
            else f"the pass name must be a string, got {name!r}"
        )
        problems.add(path, f"{what}; valid passes: {', '.join(sorted(known))}")
        return None
    cls = known.get(name)
    if cls is None:
        problems.add((*path, "name"), f"unknown pass {name!r}; {did_you_mean(name, known)}")
        return None
    options = {str(k): v for k, v in entry.items() if k != "name"}
    valid = option_names(cls)
    unknown = [key for key in options if key not in valid]
    for key in unknown:
        hint = "; top-level keys go before the first [[passes]] table" if key in _TOP_LEVEL else ""
        problems.add(
            (*path, key),
            f"unknown option {key!r} of pass {name!r}; {did_you_mean(key, valid)}{hint}",
        )
    if unknown:
        return None
    try:
        return cls(**options)
    except PassOptionError as exc:
        for error in exc.errors:
            problems.add((*path, *error["loc"]), _explain(cls, error))
    except (TypeError, ValueError) as exc:
        problems.add(path, f"pass {name!r} rejected its options: {exc}")
    return None


def _explain(cls: type, error: Any) -> str:
    loc = error["loc"]
    expected = describe_option(cls, str(loc[0])) if loc else "valid options"
    if error["type"] == "missing":
        return f"missing required option; expected {expected}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{message}, got {error['input']!r}; expected {expected}"


def _pass_options(p: Pass, toml: bool) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(p)}  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for key, value in p.options().items():
        if value is None and toml:
            if defaults.get(key) is None:
                continue  # None is the default, so leaving it out reads back the same
            raise ConfigError(
                f"{p.name}.{key} is None, which TOML cannot hold; write a .yaml file instead"
            )
        out[key] = _plain(value)
    return out


def _backend_options_data(options: Any, toml: bool) -> dict[str, Any]:
    data = options_dict(options) or {}
    if not toml:
        return data
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    for key, value in list(data.items()):
        if value is None:
            if defaults.get(key) is not None:
                raise ConfigError(
                    f"backend_options.{key} is None, which TOML cannot hold; write a .yaml "
                    "file instead"
                )
            del data[key]  # None is the default, so leaving it out reads back the same
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _toml_document(data: dict[str, Any]) -> str:
    tables = ("backend_options", "passes")
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if k not in tables]
    if "backend_options" in data:
        lines += [
            "",
            "[backend_options]",
            *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data["backend_options"].items()),
        ]
    for entry in data["passes"]:
        lines += [
            "",
            "[[passes]]",
            *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items()),
        ]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise ConfigError(
        f"cannot write {value!r} ({type(value).__name__}) to TOML; write a .yaml file instead"
    )
