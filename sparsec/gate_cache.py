"""Break-even measurements kept per host and code version, so a rebuild makes the same choice.

Why: the gate's timings move with the machine's load (the same `block-90` compile kept one
layer dense on a quiet machine and both under load). Measured once and reused, the same
compile on the same host decides the same way, and a second compile measures nothing.

Rules:
- one JSON file per cost model, host CPU and code version (`GateCache(key)`), under
  `$SPARSEC_CACHE_DIR/gate/` (default `~/.cache/sparsec/gate/`); an entry is one measured
  time in ms, keyed by what was measured (format, shape, tokens, threads, pattern);
- `SPARSEC_GATE_CACHE=off` measures every time and keeps nothing; deleting the file measures
  again;
- a write takes an exclusive `flock` on `<file>.lock`, merges with what other processes wrote
  meanwhile, and replaces the file atomically; a reader takes the shared lock; a file that
  cannot be read or parsed counts as empty (it is measured again and replaced); a cache
  directory that cannot be written leaves the gate working, uncached.

Example:
    cache = GateCache("tvm-znver3-avx2-...")
    ms = cache.get("dense|3072x768|128t|1thr") or cache.put("dense|...", measure())
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from sparsec._atomic import write_text_atomically

__all__ = ["GateCache", "cache_dir", "cpu_model"]


def cache_dir() -> Path:
    """sparsec's per-user cache directory (`SPARSEC_CACHE_DIR` or ~/.cache/sparsec)."""
    configured = os.environ.get("SPARSEC_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "sparsec"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), or the machine type where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:200] + ".json"


class GateCache:
    """Measured times of one cost model on this host (module rules)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.enabled = os.environ.get("SPARSEC_GATE_CACHE", "on").lower() not in ("off", "0")
        self.path = cache_dir() / "gate" / _file_name(key)
        self._entries: dict[str, float] | None = None

    def get(self, entry: str) -> float | None:
        """The time measured for `entry` on this host, or None."""
        if not self.enabled:
            return None
        if self._entries is None:
            with self._locked(fcntl.LOCK_SH):
                self._entries = self._read()
        value = self._entries.get(entry)
        return float(value) if value is not None else None

    def measured(self, entry: str, measure: Callable[[], float]) -> float:
        """The time kept for `entry`, or `measure()` kept now: the one way models read it."""
        cached = self.get(entry)
        return cached if cached is not None else self.put(entry, measure())

    def put(self, entry: str, ms: float) -> float:
        """Keep `ms` as the time of `entry` (merged with other writers); returns it."""
        if not self.enabled:
            return ms
        try:
            with self._locked(fcntl.LOCK_EX):
                entries = self._read()
                entries[entry] = ms
                self._write(entries)
                self._entries = entries
        except OSError:
            self._entries = {**(self._entries or {}), entry: ms}  # uncached, still decides
        return ms

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path.with_suffix(".lock"), "a+")  # noqa: SIM115
        except OSError:
            yield  # read-only cache location: read without the lock
            return
        with handle:
            fcntl.flock(handle, mode)
            yield

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            return {}
        return {k: float(v) for k, v in entries.items() if isinstance(v, int | float)}

    def _write(self, entries: dict[str, float]) -> None:
        text = json.dumps({"key": self.key, "entries": entries}, indent=1, sort_keys=True)
        write_text_atomically(self.path, text)
