"""The quality-budget search: the fastest candidate within a quality budget, and the front.

Rules:
- the calibration batches are split: the first `held_out` share (at least one batch) scores
  quality; the rest calibrate data-aware passes and INT8, and are what recovery distils on;
- every candidate is compiled with `threads`, scored by `metric` (default
  `quality.fidelity`, closeness to the dense model) on the held-out batches and saved as an
  artifact under `work_dir`: these evaluations are tasks of `sparsec.parallel.parallel_map`
  on `engine` (default "auto": Ray when installed, on a local instance unless `address`
  names a cluster; sequential otherwise), each reserving `threads` CPUs and running torch
  on as many threads (so quality is the same on either engine);
- then, one at a time in this process, each scored artifact is timed in a fresh process
  (`timing`) on the example inputs: latency is measured only once every evaluation has
  finished, so no timing shares the cores with a compile, a metric or another timing (a
  parallel timing would not be the latency of the deployed model); on a cluster, every
  latency is this machine's, and `work_dir` must be on a filesystem the nodes share;
- a candidate is within budget when its relative quality drop from the dense model's score
  is at most `budget`; the answer is the fastest of those, plus the Pareto front
  (latency vs quality) of all measured candidates; when none is within budget the result
  says so and names the closest one;
- a candidate that fails (compile, recovery, metric raising or NaN, timing) is recorded
  with its reason and the search goes on; the dense model's own score failing is a
  SearchError, since nothing can be compared to it;
- results go to `results` (JSON, rewritten atomically after each candidate is scored and
  after it is timed); a search with the same results file and model skips the candidates
  it holds and times those scored but not yet timed (their artifact still there), so an
  interrupted search resumes where it stopped; a file from another model is refused;
- `time_budget_s`: no candidate's evaluation starts once it has passed (each task checks;
  the first one always starts, and Ray's start-up counts), the skipped ones are listed;
- with a results file, the Pareto front is drawn beside it (`<results>-pareto.png`, `plot`).

Example:
    result = sparsec.search(model, x, calibration=batches, budget=0.01, results="s.json")
    fast = sparsec.load(result.chosen.artifact)
    sparsec.search(model, x, calibration=batches, engine="ray", address="ray://head:10001")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsec._atomic import write_text_atomically
from sparsec.budget_search.plot import plot_front
from sparsec.budget_search.quality import Metric, fidelity, relative_drop
from sparsec.budget_search.space import Candidate, default_space
from sparsec.budget_search.timing import save_inputs, time_artifact
from sparsec.calibration import Calibration
from sparsec.driver import CompiledModel, compile
from sparsec.errors import SearchError, SparsecError
from sparsec.ir.inputs import normalize_inputs
from sparsec.parallel import Engine, parallel_map
from sparsec.recovery import recover as run_recovery

__all__ = ["Measured", "SearchResult", "pareto_front", "search"]

_FORMAT = 1


@dataclass(frozen=True)
class Measured:
    """One candidate's outcome: its quality, latency and artifact, or why it failed."""

    name: str
    candidate: dict[str, Any]
    quality: float | None = None
    drop: float | None = None
    ms: float | None = None
    artifact: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SearchResult:
    """The chosen candidate (None when none is within budget), the front, and all points."""

    budget: float
    dense_quality: float
    chosen: Measured | None
    front: list[Measured]
    measured: list[Measured]
    skipped: list[str] = field(default_factory=list)
    message: str = ""
    results: Path | None = None
    plot: Path | None = None


def _fingerprint(model: torch.nn.Module) -> str:
    """Names, shapes and sums of the parameters: enough to tell another model's file."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(f"{name}{tuple(value.shape)}".encode())
        if value.is_floating_point():
            digest.update(f"{float(value.double().sum()):.6e}".encode())
    return digest.hexdigest()[:16]


def _read(results: Path, fingerprint: str) -> dict[str, Measured]:
    if not results.exists():
        return {}
    try:
        data = json.loads(results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SearchError(
            f"cannot read the results file {results}: {exc}. Fix: remove it."
        ) from exc
    if data.get("model") != fingerprint:
        raise SearchError(
            f"{results} holds a search of another model (fingerprint {data.get('model')}, this "
            f"one {fingerprint}). Fix: give another results file, or remove it."
        )
    return {row["name"]: Measured(**row) for row in data.get("measured", [])}


def _write(results: Path, payload: dict[str, Any]) -> None:
    """Atomically: a search killed mid-write leaves the previous file whole."""
    write_text_atomically(results, json.dumps(payload, indent=2))


def pareto_front(points: Sequence[Measured]) -> list[Measured]:
    """Measured points no other point beats in both latency and quality, fastest first."""
    front: list[Measured] = []
    for point in sorted((p for p in points if p.ok), key=lambda p: (p.ms, -(p.quality or 0))):
        if not front or (point.quality or 0) > (front[-1].quality or 0):
            front.append(point)
    return front


def _token_inputs(example_inputs: Any) -> bool:
    """Whether the model reads integer inputs (token ids): then INT8 is dynamic."""
    args, kwargs = normalize_inputs(example_inputs)
    return any(
        isinstance(leaf, torch.Tensor) and not leaf.is_floating_point()
        for leaf in (*args, *kwargs.values())
    )


def _split(calibration: Iterable[Any], held_out: float) -> tuple[list[Any], list[Any]]:
    batches = list(calibration.batches if isinstance(calibration, Calibration) else calibration)
    if len(batches) < 2:
        raise SearchError(
            f"the search needs at least 2 calibration batches (quality is scored on held-out "
            f"ones), got {len(batches)}. Fix: pass more batches."
        )
    count = min(max(1, round(len(batches) * held_out)), len(batches) - 1)
    return batches[:count], batches[count:]


def _score(metric: Metric, model: Callable[..., Any], held: Sequence[Any]) -> float:
    value = float(metric(model, held))
    if not math.isfinite(value):
        raise ValueError(f"the metric returned {value}")
    return value


def _compile_candidate(
    model: torch.nn.Module,
    example_inputs: Any,
    candidate: Candidate,
    *,
    target: str,
    threads: int,
    train: list[Any],
    recovery: dict[str, Any],
) -> CompiledModel:
    common = {"target": target, "threads": threads, "calibration": train}
    options = candidate.backend_options or None
    if not candidate.recover:
        return compile(
            model,
            example_inputs,
            pipeline=candidate.pipeline,
            backend=candidate.backend,
            backend_options=options,
            **common,
        )
    trained = compile(
        model,
        example_inputs,
        pipeline=candidate.train_pipeline or candidate.pipeline,
        backend="torch",
        **common,
    )
    run_recovery(trained, teacher=model, data=train, **recovery)
    return compile(
        trained.to_module().eval(),
        example_inputs,
        pipeline=candidate.relower,
        backend=candidate.backend,
        backend_options=options,
        **common,
    )


def search(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    calibration: Iterable[Any],
    metric: Metric | None = None,
    budget: float = 0.01,
    target: str = "cpu",
    candidates: Sequence[Candidate] | None = None,
    recover: bool | dict[str, Any] = False,
    threads: int = 1,
    repeats: int = 30,
    held_out: float = 0.25,
    time_budget_s: float | None = None,
    results: str | Path | None = None,
    work_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    engine: Engine = "auto",
    address: str | None = None,
) -> SearchResult:
    """Measure candidates on `target`; return the fastest within `budget` (module rules).

    `recover`: True (default recovery settings) or `sparsec.recover` keyword arguments, for
    the default space's pruned candidates. `work_dir` keeps the artifacts (default: beside
    `results`, else a temporary directory that is removed, leaving no artifact to load).
    `engine`/`address`: where candidates are compiled and scored (`sparsec.parallel`: Ray
    when installed, by default on a local instance; sequential without it).
    """
    if not 0 <= budget < 1:
        raise SearchError(f"budget is a relative quality drop in [0, 1), not {budget!r}")
    say = progress or (lambda message: None)
    model = model.eval()
    held, train = _split(calibration, held_out)
    held_inputs = list(Calibration(held))
    scorer = metric or fidelity(model, held_inputs)
    try:
        dense_quality = _score(scorer, model, held_inputs)
    except Exception as exc:  # the user's metric: any failure means nothing can be compared
        raise SearchError(
            f"the metric failed on the dense model ({type(exc).__name__}: {exc}); every "
            "candidate is compared with it. Fix: the metric."
        ) from exc
    recovery = {} if recover is True or recover is False else dict(recover)
    space = (
        list(candidates)
        if candidates is not None
        else default_space(
            target=target, recover=bool(recover), static_int8=not _token_inputs(example_inputs)
        )
    )
    path = Path(results) if results is not None else None
    fingerprint = _fingerprint(model)
    done = _read(path, fingerprint) if path is not None else {}
    scratch = None
    if work_dir is None:
        if path is not None:
            work = path.with_suffix("").with_name(path.stem + "-artifacts")
        else:
            scratch = tempfile.TemporaryDirectory(prefix="sparsec-search-")
            work = Path(scratch.name)
    else:
        work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs.safetensors"
    save_inputs(example_inputs, inputs)
    deadline = None if time_budget_s is None else time.time() + time_budget_s
    for name in [n for n, m in done.items() if m.ok and m.ms is None]:
        if not Path(str(done[name].artifact)).exists():
            del done[name]  # scored before, but its artifact is gone: evaluate it again
    todo = [c for c in space if c.name not in done]
    for candidate in space:
        if candidate.name in done and done[candidate.name].ms is not None:
            say(f"{candidate.name}: measured before, kept")
    shared = _Shared(
        model,
        example_inputs,
        target,
        threads,
        train,
        recovery,
        scorer,
        held_inputs,
        dense_quality,
        work,
        deadline,
        todo[0].name if todo else None,
    )

    def scored(index: int, outcome: Measured | None) -> None:
        if outcome is None:
            return
        done[outcome.name] = outcome
        say(f"candidate {index + 1}/{len(todo)}: {outcome.name} scored")
        if path is not None:
            _write(path, _payload(fingerprint, budget, dense_quality, done, target, threads))

    outcomes = parallel_map(
        _evaluate,
        todo,
        shared=shared,
        engine=engine,
        address=address,
        threads=threads,
        names=[c.name for c in todo],
        on_result=scored,
    )
    skipped = [c.name for c, outcome in zip(todo, outcomes, strict=True) if outcome is None]
    for candidate in space:  # one at a time, after every evaluation: nothing shares the cores
        point = done.get(candidate.name)
        if point is None or not point.ok or point.ms is not None:
            continue
        say(f"timing {candidate.name}")
        done[candidate.name] = _time(point, inputs, threads=threads, repeats=repeats)
        if path is not None:
            _write(path, _payload(fingerprint, budget, dense_quality, done, target, threads))
    measured = [done[c.name] for c in space if c.name in done]
    result = _choose(budget, dense_quality, measured, skipped, path)
    if path is not None:
        png = plot_front(result, path.with_name(path.stem + "-pareto.png"))
        result = dataclasses.replace(
            result,
            plot=png,
            message=result.message
            + (
                ""
                if png
                else "; no plot: matplotlib is not installed (pip install 'sparsec[plots]')"
            ),
        )
        _write(path, _payload(fingerprint, budget, dense_quality, done, target, threads, result))
    if scratch is not None:
        scratch.cleanup()
    return result


@dataclass(frozen=True)
class _Shared:
    """What every candidate's evaluation reads (sent once to Ray's object store)."""

    model: torch.nn.Module
    example_inputs: Any
    target: str
    threads: int
    train: list[Any]
    recovery: dict[str, Any]
    scorer: Metric
    held: Sequence[Any]
    dense_quality: float
    work: Path
    deadline: float | None  # time.time() after which no candidate starts...
    first: str | None  # ...but this one, so that something is measured


_FAILURES = (SparsecError, ValueError, RuntimeError, TypeError, KeyError, IndexError)


def _evaluate(shared: _Shared, candidate: Candidate) -> Measured | None:
    """Compile, score and save one candidate (None: the time budget had passed).

    A failure is recorded in the result, not raised.
    """
    late = shared.deadline is not None and time.time() > shared.deadline
    if late and candidate.name != shared.first:
        return None
    begin = time.monotonic()
    stage = "compile"
    try:
        compiled = _compile_candidate(
            shared.model,
            shared.example_inputs,
            candidate,
            target=shared.target,
            threads=shared.threads,
            train=shared.train,
            recovery=shared.recovery,
        )
        stage = "metric"
        quality = _score(shared.scorer, compiled, shared.held)
        stage = "save"
        artifact = compiled.save(shared.work / candidate.name)
    except _FAILURES as exc:
        return Measured(
            candidate.name,
            candidate.to_dict(),
            error=f"{stage}: {type(exc).__name__}: {exc}"[:600],
            seconds=round(time.monotonic() - begin, 1),
        )
    return Measured(
        candidate.name,
        candidate.to_dict(),
        quality=quality,
        drop=relative_drop(shared.dense_quality, quality),
        artifact=str(artifact),
        seconds=round(time.monotonic() - begin, 1),
    )


def _time(point: Measured, inputs: Path, *, threads: int, repeats: int) -> Measured:
    """The scored candidate's latency, in a fresh process on this machine."""
    begin = time.monotonic()
    artifact = Path(str(point.artifact))
    try:
        if not artifact.exists():
            raise SearchError(
                f"the artifact {artifact} is not on this machine, which times every candidate"
                ". Fix: on a Ray cluster, put work_dir (or results) on a filesystem that "
                "every node shares."
            )
        ms = time_artifact(artifact, inputs, threads=threads, repeats=repeats)
    except _FAILURES as exc:
        return dataclasses.replace(
            point,
            quality=None,
            drop=None,
            error=f"timing: {type(exc).__name__}: {exc}"[:600],
            seconds=round(point.seconds + time.monotonic() - begin, 1),
        )
    return dataclasses.replace(
        point, ms=ms, seconds=round(point.seconds + time.monotonic() - begin, 1)
    )


def _choose(
    budget: float,
    dense_quality: float,
    measured: list[Measured],
    skipped: list[str],
    path: Path | None,
) -> SearchResult:
    ok = [m for m in measured if m.ok]
    within = [m for m in ok if (m.drop or 0.0) <= budget]
    front = pareto_front(ok)
    if within:
        chosen = min(within, key=lambda m: m.ms or math.inf)
        message = (
            f"{chosen.name}: {chosen.ms:.3f} ms, quality {chosen.quality:.4f} "
            f"({(chosen.drop or 0) * 100:.2f}% below dense, budget {budget * 100:.2f}%)"
        )
    else:
        chosen = None
        closest = min(ok, key=lambda m: m.drop or 0.0, default=None)
        message = f"no candidate is within the budget of {budget * 100:.2f}%" + (
            f"; the closest is {closest.name} ({(closest.drop or 0) * 100:.2f}% below dense, "
            f"{closest.ms:.3f} ms)"
            if closest is not None
            else "; no candidate could be measured (see each one's error)"
        )
    return SearchResult(budget, dense_quality, chosen, front, measured, skipped, message, path)


def _payload(
    fingerprint: str,
    budget: float,
    dense_quality: float,
    done: dict[str, Measured],
    target: str,
    threads: int,
    result: SearchResult | None = None,
) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "model": fingerprint,
        "target": target,
        "threads": threads,
        "budget": budget,
        "dense_quality": dense_quality,
        "measured": [vars(m) for m in done.values()],
        **(
            {
                "chosen": result.chosen.name if result.chosen else None,
                "front": [m.name for m in result.front],
                "skipped": result.skipped,
                "message": result.message,
                "plot": str(result.plot) if result.plot else None,
            }
            if result is not None
            else {}
        ),
    }
