"""Find the line of a config field, so validation errors can point into the file.

Rules:
- a field path is a tuple of keys and list indices: `("passes", 1, "ratio")`;
- YAML lines come from the composed node tree, so they are exact;
- TOML has no positions in `tomllib`, so the key is found by scanning the text: top-level
  keys before the first table, pass options inside the N-th `[[passes]]` table, keys of a
  named table (`[backend_options]`) inside it, or as `backend_options.mode = ...` before
  the first table (best effort: keys inside inline tables get the table's line);
- a field that cannot be found has no line (`None`); the error is still raised.

Example:
    locate = toml_locator(text)
    locate(("passes", 1, "ratio"))  # -> 9
    locate(("backend_options", "mode"))  # -> the line of `mode = ...` under [backend_options]
"""

from __future__ import annotations

import re
from collections.abc import Callable

import yaml

__all__ = ["FieldPath", "Locator", "toml_locator", "yaml_locator"]

FieldPath = tuple[str | int, ...]
Locator = Callable[[FieldPath], int | None]
"""Maps a field path to its 1-based line, or None when it cannot be found."""

_TABLE = re.compile(r"^\s*\[")
_PASSES_TABLE = re.compile(r"^\s*\[\[\s*passes\s*\]\]\s*(#.*)?$")


def _key_pattern(key: str) -> re.Pattern[str]:
    return re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""")


def _table_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"""^\s*\[\s*(["']?){re.escape(name)}\1\s*\]\s*(#.*)?$""")


def toml_locator(text: str) -> Locator:
    """A locator for TOML text laid out as top-level keys, then tables and `[[passes]]`."""
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if _TABLE.match(line)]
    passes = [i for i in headers if _PASSES_TABLE.match(lines[i])]

    def find_key(key: str, start: int, stop: int) -> int | None:
        pattern = _key_pattern(key)
        for i in range(start, stop):
            if pattern.match(lines[i]):
                return i + 1
        return None

    def locate_table(path: FieldPath) -> int | None:
        name, top = str(path[0]), headers[0] if headers else len(lines)
        table = next((i for i in headers if _table_pattern(name).match(lines[i])), None)
        if table is None:
            if len(path) > 1 and isinstance(path[1], str):
                dotted = find_key(f"{name}.{path[1]}", 0, top)
                if dotted is not None:
                    return dotted
            return find_key(name, 0, top)
        if len(path) == 1 or not isinstance(path[1], str):
            return table + 1
        stop = next((h for h in headers if h > table), len(lines))
        return find_key(path[1], table + 1, stop) or table + 1

    def locate(path: FieldPath) -> int | None:
        if not path or not isinstance(path[0], str):
            return None
        if len(path) == 1 or path[0] != "passes" or not isinstance(path[1], int):
            return locate_table(path)
        index = path[1]
        if not 0 <= index < len(passes):
            return None
        start = passes[index]
        if len(path) == 2 or not isinstance(path[2], str):
            return start + 1
        stop = next((h for h in headers if h > start), len(lines))
        return find_key(path[2], start + 1, stop) or start + 1

    return locate


def yaml_locator(text: str) -> Locator:
    """A locator for YAML text, reading positions from `yaml.compose` node marks."""
    root: list[yaml.Node | None] = []

    def node_tree() -> yaml.Node | None:
        if not root:
            root.append(yaml.compose(text, Loader=yaml.SafeLoader))
        return root[0]

    def locate(path: FieldPath) -> int | None:
        node = node_tree()
        line: int | None = None
        for step in path:
            if isinstance(node, yaml.MappingNode) and isinstance(step, str):
                pair = next(((k, v) for k, v in node.value if str(k.value) == step), None)
                if pair is None:
                    return line
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(step, int)
                and step < len(node.value)
            ):
                node = node.value[step]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    return locate
