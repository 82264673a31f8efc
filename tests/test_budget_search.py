"""The quality-budget search on a tiny classifier: a choice within budget in seconds, a
resumable results file, a plot, and failures recorded instead of raised."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import sparsec
from sparsec.budget_search import Candidate, Measured, fidelity, pareto_front
from sparsec.budget_search import run as run_module
from sparsec.errors import SearchError

PRUNED = "magnitude-importance{norm=2},prune-channels{ratio=0.5,target=macs,round_to=8}"


class Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(32, 256), torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(count: int = 6) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(16, 32, generator=generator) for _ in range(count)]


@pytest.fixture
def fake_timing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Time nothing: the search's logic does not need real latencies, and each fresh timing
    process costs seconds (the first test times for real)."""
    timed: list[Path] = []

    def fake(directory: Path, inputs: Path, *, threads: int, repeats: int) -> float:
        timed.append(directory)
        return float(len(str(directory)))  # any stable number per candidate

    monkeypatch.setattr(run_module, "time_artifact", fake)
    return timed


SPACE = [
    Candidate("dense", "none"),
    Candidate("pruned-50", PRUNED),
    Candidate("pruned-50+int8", PRUNED, backend_options={"quantize": "static"}),
]


def test_a_generous_budget_picks_the_fastest_and_a_tight_one_the_closest(tmp_path: Path) -> None:
    model = Classifier().eval()
    batches = _batches()
    result = sparsec.search(
        model,
        batches[0],
        calibration=batches,
        budget=0.5,
        candidates=SPACE,
        repeats=20,
        results=tmp_path / "search.json",
        engine="sequential",
    )
    assert {m.name for m in result.measured} == {c.name for c in SPACE}
    assert all(m.ok for m in result.measured), [m.error for m in result.measured]
    dense = next(m for m in result.measured if m.name == "dense")
    assert dense.quality == pytest.approx(1.0) and dense.drop == pytest.approx(0.0)
    within = [m for m in result.measured if (m.drop or 0) <= 0.5]
    assert result.chosen is not None
    assert result.chosen.ms == min(m.ms for m in within)  # type: ignore[type-var]
    assert result.chosen.name in {m.name for m in result.front}
    loaded = sparsec.load(result.chosen.artifact)
    assert loaded(batches[0]).shape == (16, 10)
    assert result.plot is not None and result.plot.stat().st_size > 0
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["chosen"] == result.chosen.name and saved["plot"] == str(result.plot)


def test_a_budget_no_candidate_meets_names_the_closest(
    tmp_path: Path, fake_timing: list[Path]
) -> None:
    model = Classifier().eval()
    batches = _batches()

    def strict(candidate, held):  # type: ignore[no-untyped-def]
        # the dense model scores 1; anything else scores less than the budget allows
        return 1.0 if candidate is model else 0.5

    result = sparsec.search(
        model,
        batches[0],
        calibration=batches,
        metric=strict,
        budget=0.01,
        candidates=SPACE[1:],
        repeats=5,
        results=tmp_path / "s.json",
        engine="sequential",
    )
    assert result.chosen is None
    assert "no candidate is within the budget of 1.00%; the closest is" in result.message


def test_the_search_resumes_from_its_file(tmp_path: Path, fake_timing: list[Path]) -> None:
    model = Classifier().eval()
    batches = _batches()
    results = tmp_path / "resume.json"
    first = sparsec.search(
        model,
        batches[0],
        calibration=batches,
        candidates=SPACE[:2],
        repeats=5,
        results=results,
        engine="sequential",
    )
    seen: list[str] = []
    second = sparsec.search(
        model,
        batches[0],
        calibration=batches,
        candidates=SPACE,
        repeats=5,
        results=results,
        progress=seen.append,
        engine="sequential",
    )
    assert "dense: measured before, kept" in seen and "pruned-50: measured before, kept" in seen
    assert sum(message.startswith("candidate ") for message in seen) == 1  # only the new one
    assert len(fake_timing) == 3
    assert {m.name: m.ms for m in first.measured} == {
        m.name: m.ms for m in second.measured if m.name in ("dense", "pruned-50")
    }
    other = Classifier()
    torch.nn.init.zeros_(other.fc1.bias)
    with pytest.raises(SearchError, match="another model"):
        sparsec.search(other, batches[0], calibration=batches, candidates=SPACE, results=results)


def test_a_metric_that_raises_or_returns_nan_fails_that_candidate_only(tmp_path: Path) -> None:
    model = Classifier().eval()
    batches = _batches()

    def flaky(candidate, held):  # type: ignore[no-untyped-def]
        if candidate is model:
            return 1.0
        if isinstance(candidate, sparsec.CompiledModel) and "prune" in str(candidate.pipeline):
            raise RuntimeError("metric broke")
        return math.nan

    result = sparsec.search(
        model,
        batches[0],
        calibration=batches,
        metric=flaky,
        candidates=SPACE,
        repeats=5,
        engine="sequential",
    )
    errors = {m.name: m.error for m in result.measured}
    assert "metric: RuntimeError: metric broke" in str(errors["pruned-50"])
    assert "metric: ValueError: the metric returned nan" in str(errors["dense"])
    assert result.chosen is None and "no candidate could be measured" in result.message
    with pytest.raises(SearchError, match="the metric failed on the dense model"):
        sparsec.search(
            model, batches[0], calibration=batches, metric=lambda m, h: 1 / 0, candidates=SPACE
        )


def test_bad_calibration_and_budget_are_named() -> None:
    model = Classifier().eval()
    with pytest.raises(SearchError, match="at least 2 calibration batches"):
        sparsec.search(model, _batches()[0], calibration=_batches(1), candidates=SPACE)
    with pytest.raises(SearchError, match="budget is a relative quality drop"):
        sparsec.search(model, _batches()[0], calibration=_batches(), budget=2.0)


def test_fidelity_measures_agreement_with_the_dense_model() -> None:
    model = Classifier().eval()
    held = [((x,), {}) for x in _batches(2)]
    metric = fidelity(model, held)
    assert metric(model, held) == pytest.approx(1.0)
    assert metric(lambda x: -model(x), held) < 0.5  # the argmax moves for nearly every row


def test_pareto_front_keeps_only_undominated_points() -> None:
    def point(name: str, ms: float, quality: float) -> Measured:
        return Measured(name, {}, quality=quality, drop=1 - quality, ms=ms)

    points = [
        point("a", 1.0, 0.90),
        point("b", 2.0, 0.95),
        point("c", 3.0, 0.93),
        point("d", 0.5, 0.80),
        Measured("e", {}, error="compile failed"),
    ]
    assert [p.name for p in pareto_front(points)] == ["d", "a", "b"]
