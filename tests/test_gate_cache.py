"""The break-even gate's measurement cache: persistent per key, shared between processes,
never in the way (a broken file or an unwritable directory only costs a new measurement)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsec import latency_model
from sparsec.gate_cache import GateCache, cpu_model
from sparsec.latency_model import ReferenceLatencyModel
from sparsec.ops.masks import SparsityPattern


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_entries_persist_per_key(cache_dir: Path) -> None:
    GateCache("model-a").put("dense|8x8", 1.5)
    assert GateCache("model-a").get("dense|8x8") == 1.5
    assert GateCache("model-b").get("dense|8x8") is None
    stored = json.loads((cache_dir / "gate" / "model-a.json").read_text())
    assert stored == {"key": "model-a", "entries": {"dense|8x8": 1.5}}
    assert not list((cache_dir / "gate").glob(".*.tmp"))  # no temporaries left


def test_writers_merge_what_others_wrote() -> None:
    first, second = GateCache("shared"), GateCache("shared")
    assert first.get("x") is None and second.get("y") is None  # both read an empty file
    first.put("x", 1.0)
    second.put("y", 2.0)
    fresh = GateCache("shared")
    assert (fresh.get("x"), fresh.get("y")) == (1.0, 2.0)


def test_a_corrupt_file_counts_as_empty_and_is_replaced(cache_dir: Path) -> None:
    path = cache_dir / "gate" / "broken.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    cache = GateCache("broken")
    assert cache.get("x") is None
    cache.put("x", 3.0)
    assert GateCache("broken").get("x") == 3.0


def test_off_measures_every_time(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEC_GATE_CACHE", "off")
    cache = GateCache("off")
    assert cache.put("x", 1.0) == 1.0 and cache.get("x") is None
    assert not (cache_dir / "gate").exists()


def test_an_unwritable_cache_location_leaves_the_gate_working(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = cache_dir / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSEC_CACHE_DIR", str(blocker))  # a directory under a file
    cache = GateCache("nowhere")
    assert cache.put("x", 2.0) == 2.0
    assert cache.get("x") == 2.0  # kept for this process


def test_reference_model_measures_each_shape_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = latency_model.fastest_ms

    def counting(fn, repeats, threads):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(fn, repeats, threads)

    monkeypatch.setattr(latency_model, "fastest_ms", counting)
    pattern = SparsityPattern("unstructured", 0.9)
    first = ReferenceLatencyModel(repeats=2)
    dense, sparse = first.dense_ms(32, 16, 4), first.sparse_ms("csr", 32, 16, 4, pattern)
    assert len(calls) == 2
    second = ReferenceLatencyModel(repeats=2)
    assert (second.dense_ms(32, 16, 4), second.sparse_ms("csr", 32, 16, 4, pattern)) == (
        dense,
        sparse,
    )
    assert len(calls) == 2  # read from the cache: same figures, same decision
    assert second.dense_ms(32, 16, 4 * 2) > 0 and len(calls) == 3  # a new shape is measured
    assert cpu_model() and torch.__version__ in second.cache.key
