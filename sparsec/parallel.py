"""Map an evaluation over candidates on Ray, or sequentially: the same results, in order.

Rules:
- `parallel_map(fn, candidates, shared=...)` returns `[fn(shared, c) for c in candidates]`;
  `engine="sequential"` computes exactly that in this process, `engine="ray"` runs each
  call as a Ray task, `engine="auto"` uses Ray when it is installed (`pip install
  'sparsec[ray]'`) and runs sequentially otherwise;
- on Ray, `shared` (the graph, the model, the calibration data) goes into the object store
  once (`ray.put`) and every task reads it from there; only the candidate travels per task;
- `address=None` starts a local instance (Ray's own rule: `RAY_ADDRESS`, when set, names a
  cluster to join instead), `address="auto"` or `"ray://host:10001"` joins an existing
  cluster; a process joins once (`connect`) and later maps reuse that instance whatever
  address they name, since starting one costs seconds; a local instance's workers see the
  driver's `sys.path`, so models defined in the caller's modules unpickle there;
- every call runs with torch on `threads` threads (default 1), on either engine, and a Ray
  task reserves as many CPUs, so at most `cpus / threads` run at once on a node: a matrix
  product's sums depend on the thread count, so equal counts give equal numbers;
- a call that raises, in either engine, stops the map with a `CandidateError` naming the
  candidate and the cause (the original exception is its `__cause__` where it could be
  sent back); Ray requested but missing, or not reachable, is an `EngineError`;
- `on_result(index, result)` runs in this process as each candidate finishes (in order
  sequentially, as they complete on Ray): progress, partial results files.

Example:
    scores = parallel_map(evaluate, candidates, shared=(model, batches), engine="auto")
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

import torch

from sparsec.errors import CandidateError, EngineError

__all__ = [
    "Engine",
    "connect",
    "parallel_map",
    "ray_available",
    "resolve_engine",
    "torch_threads",
]

Engine = Literal["auto", "ray", "sequential"]
S = TypeVar("S")
C = TypeVar("C")
R = TypeVar("R")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch on `threads` threads (None: as they are), then restore the count.

    torch's thread count is process-wide: an executable sets it for its own call only.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def ray_available() -> bool:
    """Whether Ray can be imported here (the `ray` extra is installed)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: Engine) -> Literal["ray", "sequential"]:
    """The engine a map will use: "auto" becomes "ray" when Ray is installed."""
    if engine == "sequential":
        return "sequential"
    if ray_available():
        return "ray"
    if engine == "ray":
        raise EngineError(
            "engine='ray' was requested but Ray is not installed. Fix: pip install "
            "'sparsec[ray]', or pass engine='auto' (sequential without Ray) or 'sequential'."
        )
    return "sequential"


def _name(candidate: Any, names: Sequence[str] | None, index: int) -> str:
    return names[index] if names is not None else f"#{index} {candidate!r}"[:200]


def parallel_map(
    fn: Callable[[S, C], R],
    candidates: Sequence[C],
    *,
    shared: S,
    engine: Engine = "auto",
    address: str | None = None,
    threads: int = 1,
    names: Sequence[str] | None = None,
    on_result: Callable[[int, R], None] | None = None,
) -> list[R]:
    """`[fn(shared, c) for c in candidates]` on `engine` (see module rules).

    `names`: how errors and progress name each candidate (default: its repr).
    """
    if names is not None and len(names) != len(candidates):
        raise ValueError(f"{len(names)} names for {len(candidates)} candidates")
    if resolve_engine(engine) == "sequential":
        results: list[R] = []
        for index, candidate in enumerate(candidates):
            try:
                result = _call(fn, threads, shared, candidate)
            except Exception as exc:  # any failure of the caller's function, named below
                raise CandidateError(_name(candidate, names, index), exc) from exc
            results.append(result)
            if on_result is not None:
                on_result(index, result)
        return results
    return _ray_map(fn, candidates, shared, address, threads, names, on_result)


def _call(fn: Callable[[Any, Any], Any], threads: int, shared: Any, candidate: Any) -> Any:
    with torch_threads(threads):
        return fn(shared, candidate)


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """The `ray` module, joined to `address` or to a local instance (see module rules).

    `num_cpus` sizes a local instance (default: every CPU); a process joins one instance,
    so once joined, later calls return it whatever they ask.
    """
    resolve_engine("ray")
    import ray

    if ray.is_initialized():
        return ray
    try:
        if address is None and "RAY_ADDRESS" not in os.environ:
            # a local instance: its workers import what the driver imports
            path = os.pathsep.join(p for p in sys.path if p)
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # Ray's start-up and connection errors have no common base
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise EngineError(
            f"cannot start or join {where}: {type(exc).__name__}: {exc}. Fix: check the "
            "address (`ray status` on the head node), or pass engine='sequential'."
        ) from exc
    return ray


def _ray_map(
    fn: Callable[[Any, Any], R],
    candidates: Sequence[Any],
    shared: Any,
    address: str | None,
    threads: int,
    names: Sequence[str] | None,
    on_result: Callable[[int, R], None] | None,
) -> list[R]:
    ray = connect(address)
    from ray.exceptions import RayError, RayTaskError

    task = ray.remote(num_cpus=threads, max_retries=0)(_call)
    try:
        shared_ref = ray.put(shared)
    except Exception as exc:  # pickling errors have no common base
        raise EngineError(
            f"cannot send the shared data to Ray ({type(exc).__name__}: {exc}): tasks read "
            "it in other processes, so it must pickle. Fix: make it picklable (a metric "
            "defined at module level, no open files or sessions), or engine='sequential'."
        ) from exc
    pending = {task.remote(fn, threads, shared_ref, c): i for i, c in enumerate(candidates)}
    results: dict[int, R] = {}
    try:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready)
            try:
                results[index] = ray.get(ready)
            except RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                raise CandidateError(_name(candidates[index], names, index), cause) from cause
            except RayError as exc:  # the worker died, the object was lost
                raise CandidateError(_name(candidates[index], names, index), exc) from exc
            if on_result is not None:
                on_result(index, results[index])
    finally:
        for ref in pending:
            ray.cancel(ref)
    return [results[i] for i in range(len(candidates))]
