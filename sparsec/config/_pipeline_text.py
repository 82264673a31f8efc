"""Parse the text form of a pipeline, `pipeline(a{x=1},b{ys=[p,q]})`, into plain data.

Rules:
- the inverse of `str(Pipeline)`: the `pipeline(...)` wrapper is optional, whitespace is free;
- values are literals: integers, floats, `true`/`false` (any case), `none`/`null`, quoted or
  bare strings, and `[a,b]` lists of values;
- this module checks syntax only and records each pass's and option's column; whether the
  names and values are valid is the config validator's job.

Example:
    parse_text("magnitude-importance{norm=1},prune-channels{ratio=0.3}")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sparsec.errors import ConfigError

__all__ = ["ParsedText", "parse_literal", "parse_text"]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?((\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|inf|nan)")
_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}
_BARE_END = ",}]"


@dataclass
class ParsedText:
    """Config data (`{"passes": [{"name": ..., option: value}]}`) and 1-based columns by field path."""

    data: dict[str, Any]
    columns: dict[tuple[str | int, ...], int] = field(default_factory=dict)


class _Parser:
    def __init__(self, text: str, start: int, end: int) -> None:
        self.text = text
        self.pos = start
        self.end = end

    def fail(self, what: str) -> ConfigError:
        return ConfigError(
            f"<pipeline text>:1:{self.pos + 1}: {what}\n  {self.text}\n  {' ' * self.pos}^"
        )

    def skip(self) -> None:
        while self.pos < self.end and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < self.end else ""

    def expect(self, char: str, context: str) -> None:
        if self.peek() != char:
            found = repr(self.peek()) if self.peek() else "the end"
            raise self.fail(f"expected {char!r} {context}, found {found}")
        self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip()
        found = pattern.match(self.text, self.pos, self.end)
        if not found:
            raise self.fail(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def value(self) -> Any:
        char = self.peek()
        if char == "[":
            self.pos += 1
            items: list[Any] = []
            while self.peek() != "]":
                if items:
                    self.expect(",", "between list items")
                items.append(self.value())
            self.pos += 1
            return items
        if char in ("'", '"'):
            end = self.text.find(char, self.pos + 1, self.end)
            if end < 0:
                raise self.fail("unterminated string")
            start, self.pos = self.pos + 1, end + 1
            return self.text[start:end]
        start = self.pos
        while self.pos < self.end and self.text[self.pos] not in _BARE_END:
            self.pos += 1
        token = self.text[start : self.pos].strip()
        if not token:
            self.pos = start
            raise self.fail("expected a value")
        return _literal(token)


def parse_literal(text: str) -> Any:
    """One value as pipeline text reads a bare or quoted one: `64`, `0.5`, `true`, `none`, `'x'`."""
    token = text.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in ("'", '"'):
        return token[1:-1]
    return _literal(token)


def _literal(token: str) -> Any:
    if token.lower() in _CONSTANTS:
        return _CONSTANTS[token.lower()]
    if _INT.fullmatch(token):
        return int(token)
    if _FLOAT.fullmatch(token):
        return float(token)
    return token


def parse_text(text: str) -> ParsedText:
    """Parse pipeline text into config data, raising ConfigError with a caret on bad syntax."""
    wrapped = re.fullmatch(r"\s*pipeline\s*\((.*)\)\s*", text, re.DOTALL)
    parser = _Parser(text, *(wrapped.span(1) if wrapped else (0, len(text))))
    passes: list[dict[str, Any]] = []
    parsed = ParsedText({"passes": passes})
    while parser.peek():
        if passes:
            parser.expect(",", "between passes")
        index = len(passes)
        parser.skip()
        parsed.columns[("passes", index)] = parser.pos + 1
        entry: dict[str, Any] = {"name": parser.match(_NAME, "a pass name")}
        if parser.peek() == "{":
            parser.pos += 1
            while parser.peek() != "}":
                if not parser.peek():
                    raise parser.fail("expected '}' to close the options")
                if len(entry) > 1:
                    parser.expect(",", "between options")
                parser.skip()
                column = parser.pos + 1
                key = parser.match(_KEY, "an option name")
                if key == "name":
                    parser.pos = column - 1
                    raise parser.fail("'name' is not an option: the pass name goes before '{'")
                if key in entry:
                    parser.pos = column - 1
                    raise parser.fail(f"option {key!r} is given twice")
                parser.expect("=", f"after option name {key!r}")
                entry[key] = parser.value()
                parsed.columns[("passes", index, key)] = column
            parser.pos += 1
        passes.append(entry)
    return parsed
