"""The break-even gate: is a sparse format faster than dense for this layer on this machine?

Rules:
- a cost model answers `dense_ms(out, in, tokens)` and `sparse_ms(format, out, in, tokens,
  pattern)`; the default, "reference", measures torch's dense linear and sparsec's
  reference kernels here (the fastest of `repeats` runs, since other processes share the
  cores, on random weights of that pattern); it measures with `threads`
  threads (default 1: with other processes on the cores, multi-threaded timings swing by
  100×, and the dense/sparse ratio is what decides);
- backends with their own kernels register another model under a name (their registry
  entry's `latency_model`), and `lower-sparse-weights{cost_model=tvm}` uses it;
- every model keeps what it measured in a `GateCache` for this host and code version, so
  the same compile on the same host decides the same way;
- `decide` keeps dense unless sparse is at least `min_speedup` times faster, and says why.

Example:
    pattern = SparsityPattern("unstructured", 0.9)
    decision = decide(ReferenceLatencyModel(), "fc1.weight", "csr", (3072, 768), pattern, tokens=128)
    decision.reason  # "csr 1.20 ms vs dense 3.10 ms at 90% sparsity: 2.58x faster"
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from sparsec.gate_cache import GateCache, cpu_model
from sparsec.ops.masks import SparsityPattern, mask_from_scores
from sparsec.ops.sparse_formats import FORMATS
from sparsec.ops.sparse_formats import SparseFormat as SparseFormatClass

__all__ = [
    "LATENCY_MODELS",
    "LatencyModel",
    "Decision",
    "MeasuredLatencyModel",
    "SparseFormat",
    "ReferenceLatencyModel",
    "decide",
    "fastest_ms",
    "get_latency_model",
    "known_latency_models",
    "measurement_key",
    "random_layer",
    "random_sparse_call",
    "register_latency_model",
]

SparseFormat = Literal["csr", "bsr", "nm"]
"""A format by name (`sparsec.ops.sparse_formats.FORMATS` holds the classes)."""


class LatencyModel(Protocol):
    """Predicted or measured milliseconds of one linear layer, dense or sparse."""

    def dense_ms(self, out_features: int, in_features: int, tokens: int) -> float: ...

    def sparse_ms(
        self,
        fmt: SparseFormat,
        out_features: int,
        in_features: int,
        tokens: int,
        pattern: SparsityPattern,
    ) -> float: ...


def fastest_ms(fn: Callable[[], object], repeats: int, threads: int) -> float:
    """Fastest of `repeats` runs with torch on `threads` threads: on a shared machine the
    minimum is the stable estimate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return min(times) * 1e3


def random_layer(
    out_features: int, in_features: int, tokens: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """Seeded activations [tokens, in] and weights [out, in] (and the generator, for masks)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, in_features, generator=gen)
    w = torch.randn(out_features, in_features, generator=gen)
    return x, w, gen


@dataclass
class MeasuredLatencyModel(ABC):
    """A latency model that measures on this machine and keeps each result in its GateCache.

    Rules: a subclass says how it measures (`measure_dense`, `measure_sparse`) and what its
    timings depend on besides the layer (`cache_name`: host, library and code versions);
    the cache entry of each measurement (`measurement_key`) is the same for every model.
    """

    repeats: int = 10
    threads: int = 1
    seed: int = 0
    _cache: GateCache | None = field(default=None, repr=False)

    @property
    def cache(self) -> GateCache:
        if self._cache is None:
            self._cache = GateCache(self.cache_name())
        return self._cache

    def dense_ms(self, out_features: int, in_features: int, tokens: int) -> float:
        def measure() -> float:
            x, w, _ = random_layer(out_features, in_features, tokens, self.seed)
            return self.measure_dense(x, w)

        key = measurement_key("dense", out_features, in_features, tokens, self.threads)
        return self.cache.measured(key, measure)

    def sparse_ms(
        self,
        fmt: SparseFormat,
        out_features: int,
        in_features: int,
        tokens: int,
        pattern: SparsityPattern,
    ) -> float:
        def measure() -> float:
            sparse, args = random_sparse_call(
                fmt, out_features, in_features, tokens, pattern, self.seed
            )
            return self.measure_sparse(sparse, args)

        key = measurement_key(fmt, out_features, in_features, tokens, self.threads, pattern)
        return self.cache.measured(key, measure)

    @abstractmethod
    def cache_name(self) -> str:
        """The GateCache this model's timings are valid in."""

    @abstractmethod
    def measure_dense(self, x: torch.Tensor, w: torch.Tensor) -> float:
        """Milliseconds of the dense linear `x @ w.T`, measured now."""

    @abstractmethod
    def measure_sparse(self, sparse: SparseFormatClass, args: tuple[Any, ...]) -> float:
        """Milliseconds of `sparse.op(*args)` (from `random_sparse_call`), measured now."""


@dataclass
class ReferenceLatencyModel(MeasuredLatencyModel):
    """Measures torch dense and sparsec's reference kernels on this machine (cached)."""

    def cache_name(self) -> str:
        return f"reference-{cpu_model()}-torch{torch.__version__}-sparsec{_version()}"

    def measure_dense(self, x: torch.Tensor, w: torch.Tensor) -> float:
        with torch.no_grad():
            return fastest_ms(lambda: torch.nn.functional.linear(x, w), self.repeats, self.threads)

    def measure_sparse(self, sparse: SparseFormatClass, args: tuple[Any, ...]) -> float:
        with torch.no_grad():
            return fastest_ms(lambda: sparse.op(*args), self.repeats, self.threads)


def random_sparse_call(
    fmt: SparseFormat,
    out_features: int,
    in_features: int,
    tokens: int,
    pattern: SparsityPattern,
    seed: int,
) -> tuple[SparseFormatClass, tuple[Any, ...]]:
    """A seeded random layer masked to `pattern` and compressed into `fmt`: the format and
    the arguments of its op (x first, no bias)."""
    x, w, gen = random_layer(out_features, in_features, tokens, seed)
    mask = mask_from_scores(torch.rand(w.shape, generator=gen), pattern)
    sparse = FORMATS[fmt]
    arrays = sparse.compress(w, mask, pattern)
    return sparse, sparse.call_args(x, arrays, None, (out_features, in_features), pattern)


def measurement_key(
    what: str,
    out_features: int,
    in_features: int,
    tokens: int,
    threads: int,
    pattern: SparsityPattern | None = None,
) -> str:
    """The GateCache entry of one measurement (a pattern's str names its kind, ratio, block)."""
    key = f"{what}|{out_features}x{in_features}|{tokens}t|{threads}thr"
    return key if pattern is None else f"{key}|{pattern}"


def _version() -> str:
    from sparsec import __version__

    return __version__


LatencyModelFactory = Callable[[], LatencyModel]

LATENCY_MODELS: dict[str, LatencyModelFactory | str] = {"reference": ReferenceLatencyModel}
"""Latency models by name: a factory, or "module:attribute" of one, imported on first use
(a backend's model may need a heavy import). Backends add theirs through their registry
entry (`sparsec.backends.base.BackendEntry.latency_model`)."""


def register_latency_model(name: str, factory: LatencyModelFactory | str) -> None:
    """Make `lower-sparse-weights{cost_model=<name>}` use `factory()`; a name is taken once."""
    if name in LATENCY_MODELS and LATENCY_MODELS[name] is not factory:
        raise ValueError(f"a latency model is already registered as {name!r}")
    LATENCY_MODELS[name] = factory


def known_latency_models() -> list[str]:
    return sorted(LATENCY_MODELS)


def get_latency_model(name: str) -> LatencyModelFactory:
    """The factory registered as `name`, importing its module first where it was named."""
    if name not in LATENCY_MODELS:
        raise KeyError(f"unknown cost model {name!r}; known: {known_latency_models()}")
    factory = LATENCY_MODELS[name]
    if isinstance(factory, str):
        module, attribute = factory.split(":")
        factory = LATENCY_MODELS[name] = getattr(importlib.import_module(module), attribute)
    return factory


@dataclass(frozen=True)
class Decision:
    """One layer's format choice and why."""

    layer: str
    format: Literal["dense", "csr", "bsr", "nm"]
    sparsity: float
    dense_ms: float | None
    sparse_ms: float | None
    reason: str


def decide(
    model: LatencyModel,
    layer: str,
    fmt: SparseFormat,
    shape: tuple[int, int],
    pattern: SparsityPattern,
    *,
    tokens: int,
    min_speedup: float = 1.0,
) -> Decision:
    """Keep `fmt` only if it is at least `min_speedup`× faster than dense for this layer."""
    out_features, in_features = shape
    dense = model.dense_ms(out_features, in_features, tokens)
    sparsity = pattern.target_sparsity
    sparse = model.sparse_ms(fmt, out_features, in_features, tokens, pattern)
    speedup = dense / sparse if sparse > 0 else float("inf")
    what = (
        f"{fmt} {sparse:.3f} ms vs dense {dense:.3f} ms at {sparsity:.0%} sparsity, {tokens} tokens"
    )
    if speedup >= min_speedup:
        return Decision(layer, fmt, sparsity, dense, sparse, f"{what}: {speedup:.2f}x faster")
    return Decision(
        layer,
        "dense",
        sparsity,
        dense,
        sparse,
        f"{what}: {speedup:.2f}x < {min_speedup:.2f}x, dense kept",
    )
