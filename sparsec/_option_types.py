"""Describe a pass option's type and bounds in words, for config error messages.

Rules:
- the description comes from the pass's pydantic fields, so it never drifts from validation;
- bounds from `Field(ge=..., lt=...)` read as an interval: `a number in [0, 1)`.

Example:
    describe_option(PruneChannels, "ratio")  # -> "a number in [0, 1)"
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

__all__ = ["describe_option", "option_names"]

_SINGULAR: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}
_PLURAL: dict[Any, str] = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
_LISTS = (tuple, list, set, frozenset, Sequence)


def option_names(cls: type) -> tuple[str, ...]:
    """The option names of a pass class: its dataclass fields, in order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def describe_option(cls: type, name: str) -> str:
    """What a valid value of option `name` of pass `cls` looks like, in words."""
    info = getattr(cls, "__pydantic_fields__", {}).get(name)
    if info is None:
        return "a valid value"
    bounds = _bounds(info.metadata)
    text = _describe(info.annotation)
    return f"{text} {bounds}" if bounds else text


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
