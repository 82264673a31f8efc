"""Describe option types in words, and check config values against plain dataclass options.

Rules:
- a pass option's description comes from the pass's pydantic fields, so it never drifts
  from validation; bounds from `Field(ge=..., lt=...)` read as an interval: `a number in [0, 1)`;
- backend options are plain frozen dataclasses (`TvmOptions`); `coerce_value` turns a value
  read from a file or the command line into a field's type, strictly: an enum from one of its
  values, a `Path` from a string, a float from an int; never a number from a string or a
  bool, which TOML, YAML and the CLI already type;
- range checks stay with the options class (its `__post_init__`).

Example:
    describe_option(PruneChannels, "ratio")  # -> "a number in [0, 1)"
    coerce_value(TvmMode, "relax")           # -> TvmMode.RELAX
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from sparsec.config._suggest import closest

__all__ = ["coerce_value", "describe_option", "field_types", "option_names"]

_SINGULAR: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path (a string)",
}
_PLURAL: dict[Any, str] = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
_LISTS = (tuple, list, set, frozenset, Sequence)


def option_names(cls: type) -> tuple[str, ...]:
    """The option names of a pass class: its dataclass fields, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def describe_option(cls: type, name: str) -> str:
    """What a valid value of option `name` of `cls` (a pass or a plain dataclass) looks like."""
    info = getattr(cls, "__pydantic_fields__", {}).get(name)
    if info is None:
        tp = field_types(cls).get(name)
        return "a valid value" if tp is None else _describe(tp)
    bounds = _bounds(info.metadata)
    text = _describe(info.annotation)
    return f"{text} {bounds}" if bounds else text


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each dataclass field of `cls` (string annotations evaluated)."""
    if not dataclasses.is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def coerce_value(tp: Any, value: Any) -> Any:
    """`value` (as read from TOML, YAML or the CLI) as type `tp`, or ValueError saying why not.

    Rules:
    - `X | None` takes None; a union tries its types in order;
    - an enum takes a member or one of the members' values (with a suggestion when close);
    - `Path` takes a non-empty string; `float` takes an int; a bool is never a number.
    """
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return coerce_value(args[0], value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce_value(option, value)
            except ValueError:
                continue
        raise ValueError(_mismatch(tp, value))
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ValueError(_mismatch(tp, value))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        members = {str(m.value): m for m in tp}
        if isinstance(value, str) and value in members:
            return members[value]
        guess = closest(value, members) if isinstance(value, str) else None
        raise ValueError(_mismatch(tp, value) + (f"; did you mean {guess!r}?" if guess else ""))
    if tp is Path:
        if isinstance(value, Path) or (isinstance(value, str) and value):
            return Path(value)
        raise ValueError(_mismatch(tp, value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any:
        return value
    if isinstance(tp, type) and isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise ValueError(_mismatch(tp, value))


def _mismatch(tp: Any, value: Any) -> str:
    return f"got {value!r}; expected {_describe(tp)}"


def _describe(tp: Any, plural: bool = False) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _describe(args[0], plural)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [_describe(a, plural) for a in args if a is not type(None)]
        return " or ".join(parts + (["none"] if type(None) in args else []))
    if origin in _LISTS:
        return "a list of " + _describe(args[0] if args else Any, plural=True)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    table = _PLURAL if plural else _SINGULAR
    return table.get(tp, getattr(tp, "__name__", str(tp)))


def _bounds(metadata: Iterable[Any]) -> str:
    limits = {
        attr: getattr(m, attr)
        for m in metadata
        for attr in ("ge", "gt", "le", "lt")
        if getattr(m, attr, None) is not None
    }
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = (
        ("]", limits["le"]) if "le" in limits else (")", limits["lt"]) if "lt" in limits else None
    )
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""
