"""Nearest-name suggestions, so every "unknown X" error can say what was probably meant."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean", "unknown_choice"]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most similar to `word`, or None when none is similar enough."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`did you mean 'prune-channels'? valid: a, b, c`: the closest choice, then every choice.

    Rules:
    - the closest choice is named only when difflib finds one similar enough;
    - the list of valid choices is always given, sorted, so the user can pick one.

    Example:
        did_you_mean("prune-chanels", ["prune-channels", "magnitude-importance"])
    """
    options = sorted(choices)
    valid = ", ".join(options) if options else "(none)"
    close = closest(word, options)
    return f"did you mean {close!r}? valid: {valid}" if close else f"valid: {valid}"


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> str | None:
    """None when `value` is one of `choices`, else `unknown target 'gpu'; did you mean ...`."""
    options = tuple(choices)
    if isinstance(value, str) and value in options:
        return None
    return f"unknown {what} {value!r}; {did_you_mean(str(value), options)}"
