"""The quality-budget search: the fastest candidate within a quality budget, and the front.

Rules:
- the calibration batches are split: the first `held_out` share (at least one batch) scores
  quality; the rest calibrate data-aware passes and INT8, and are what recovery distils on;
- every candidate is compiled with `threads`, saved as an artifact under `work_dir`, timed
  in a fresh process (`timing`) on the example inputs, and scored by `metric` (default
  `quality.fidelity`, closeness to the dense model) on the held-out batches;
- a candidate is within budget when its relative quality drop from the dense model's score
  is at most `budget`; the answer is the fastest of those, plus the Pareto front
  (latency vs quality) of all measured candidates; when none is within budget the result
  says so and names the closest one;
- a candidate that fails (compile, recovery, metric raising or NaN, timing) is recorded
  with its reason and the search goes on; the dense model's own score failing is a
  SearchError, since nothing can be compared to it;
- results go to `results` (JSON, rewritten atomically after every candidate); a search
  with the same results file and model skips the candidates it holds, so an interrupted
  search resumes where it stopped; a file from another model is refused;
- `time_budget_s` stops starting new candidates once it has passed; the skipped ones are
  listed;
- with a results file, the Pareto front is drawn beside it (`<results>-pareto.png`, `plot`);
- evaluation is sequential: timings taken in parallel on the same cores would not be
  latencies of the deployed model.

Example:
    result = sparsec.search(model, x, calibration=batches, budget=0.01, results="s.json")
    fast = sparsec.load(result.chosen.artifact)
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
) -> SearchResult:
    """Measure candidates on `target`; return the fastest within `budget` (module rules).

    `recover`: True (default recovery settings) or `sparsec.recover` keyword arguments, for
    the default space's pruned candidates. `work_dir` keeps the artifacts (default: beside
    `results`, else a temporary directory that is removed, leaving no artifact to load).
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
    started = time.monotonic()
    skipped: list[str] = []
    for index, candidate in enumerate(space):
        if candidate.name in done:
            say(f"{candidate.name}: measured before, kept")
            continue
        if time_budget_s is not None and time.monotonic() - started > time_budget_s:
            skipped.append(candidate.name)
            continue
        say(f"candidate {index + 1}/{len(space)}: {candidate.name}")
        done[candidate.name] = _measure(
            candidate,
            model,
            example_inputs,
            target=target,
            threads=threads,
            train=train,
            recovery=recovery,
            scorer=scorer,
            held=held_inputs,
            dense_quality=dense_quality,
            work=work,
            inputs=inputs,
            repeats=repeats,
        )
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


def _measure(
    candidate: Candidate,
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    target: str,
    threads: int,
    train: list[Any],
    recovery: dict[str, Any],
    scorer: Metric,
    held: Sequence[Any],
    dense_quality: float,
    work: Path,
    inputs: Path,
    repeats: int,
) -> Measured:
    """Compile, save, score and time one candidate; a failure is recorded, not raised."""
    begin = time.monotonic()
    stage = "compile"
    try:
        compiled = _compile_candidate(
            model,
            example_inputs,
            candidate,
            target=target,
            threads=threads,
            train=train,
            recovery=recovery,
        )
        stage = "metric"
        quality = _score(scorer, compiled, held)
        stage = "save"
        artifact = compiled.save(work / candidate.name)
        stage = "timing"
        ms = time_artifact(artifact, inputs, threads=threads, repeats=repeats)
    except (SparsecError, ValueError, RuntimeError, TypeError, KeyError, IndexError) as exc:
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
        drop=relative_drop(dense_quality, quality),
        ms=ms,
        artifact=str(artifact),
        seconds=round(time.monotonic() - begin, 1),
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
