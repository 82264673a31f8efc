"""parallel_map on a 2-CPU local Ray instance equals the sequential run (a plain map, the
sensitivity sweep, the search's evaluations); without Ray, "auto" runs sequentially and
"ray" is a named error; a failing candidate is named with its cause on either engine.

Ray starts once for the module (a few seconds); the models are tiny."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from models import make_residual

import sparsec
from sparsec import parallel
from sparsec.budget_search import Candidate
from sparsec.budget_search import run as run_module
from sparsec.calibration import Calibration
from sparsec.errors import CandidateError, EngineError
from sparsec.frontends import trace
from sparsec.ir.portable import PortableModule
from sparsec.passes.analysis import Sensitivity
from sparsec.pipeline import AnalysisManager

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cpus() -> Iterator[float]:
    ray = parallel.connect(num_cpus=2)
    yield ray.cluster_resources()["CPU"]
    ray.shutdown()


def _square_plus(shared: dict[str, int], candidate: int) -> int:
    return candidate * candidate + shared["offset"]


def _fail_on_three(shared: Any, candidate: int) -> int:
    if candidate == 3:
        raise ValueError("three is not allowed")
    return candidate


def test_ray_map_equals_the_sequential_map_in_order(ray_cpus: float) -> None:
    assert ray_cpus == 2
    candidates = list(range(10))
    seen: list[int] = []
    on_ray = parallel.parallel_map(
        _square_plus,
        candidates,
        shared={"offset": 7},
        engine="ray",
        on_result=lambda i, r: seen.append(i),
    )
    assert on_ray == parallel.parallel_map(
        _square_plus, candidates, shared={"offset": 7}, engine="sequential"
    )
    assert on_ray == [c * c + 7 for c in candidates]
    assert sorted(seen) == candidates


@pytest.mark.parametrize("engine", ["ray", "sequential"])
def test_a_failing_candidate_is_named_with_its_cause(engine: str, ray_cpus: float) -> None:
    names = [f"cand-{i}" for i in range(5)]
    with pytest.raises(CandidateError, match="candidate cand-3 failed: ValueError: three") as info:
        parallel.parallel_map(_fail_on_three, range(5), shared=None, engine=engine, names=names)  # type: ignore[arg-type]
    assert info.value.candidate == "cand-3" and isinstance(info.value.cause, ValueError)


def test_shared_data_that_does_not_pickle_is_named(ray_cpus: float) -> None:
    import threading

    with pytest.raises(EngineError, match="cannot send the shared data to Ray"):
        parallel.parallel_map(_square_plus, [1], shared={"lock": threading.Lock()}, engine="ray")  # type: ignore[dict-item]


def test_without_ray_auto_is_sequential_and_ray_is_a_named_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert not parallel.ray_available()
    assert parallel.resolve_engine("auto") == "sequential"
    assert parallel.parallel_map(_square_plus, [1, 2], shared={"offset": 1}) == [2, 5]
    with pytest.raises(EngineError, match=r"pip install 'sparsec\[ray\]'"):
        parallel.parallel_map(_square_plus, [1], shared={"offset": 1}, engine="ray")


def test_a_portable_module_runs_the_same_graph_with_the_same_names() -> None:
    model, x = make_residual()
    graph = trace(model, (x,))
    rebuilt = pickle.loads(pickle.dumps(PortableModule.of(graph.module))).module()
    assert [n.name for n in rebuilt.graph.nodes] == [n.name for n in graph.module.graph.nodes]
    torch.testing.assert_close(rebuilt(x), graph.module(x), rtol=0, atol=0)


def _deep_mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    """Nine linears: eight hidden widths, so eight groups (the sweep's candidates)."""
    torch.manual_seed(0)
    widths = [12, 16, 24, 16, 24, 16, 24, 16, 12, 4]
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:], strict=False):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).eval(), torch.randn(6, 12)


def test_the_sensitivity_sweep_on_ray_equals_the_sequential_one(ray_cpus: float) -> None:
    model, x = _deep_mlp()
    graph = trace(model, (x,))
    batches = Calibration([x, x.flip(0)])

    def sweep(engine: str) -> Any:
        return AnalysisManager(graph, batches).get(
            Sensitivity(ratios=(0.25, 0.5), engine=engine, threads=1)
        )  # type: ignore[arg-type]

    sequential, on_ray = sweep("sequential"), sweep("ray")
    assert len(sequential.deviation) == 8  # groups: the candidates of the sweep
    assert sequential.layers == on_ray.layers
    for index, row in sequential.deviation.items():
        np.testing.assert_array_equal(on_ray.deviation[index], row)
        assert row[1] > 0


PRUNED = "magnitude-importance{{norm=2}},prune-channels{{ratio={r},target=macs,round_to=8}}"


class _Classifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_the_search_on_ray_equals_the_sequential_one(
    ray_cpus: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # latency is not what differs between engines (it is always taken afterwards, serially,
    # in this process): a stable fake keeps the test fast and the comparison exact
    monkeypatch.setattr(
        run_module, "time_artifact", lambda d, i, *, threads, repeats: float(len(d.name))
    )
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 32, generator=generator) for _ in range(4)]
    # the torch backend: compiles in well under a second (no ONNX export)
    space = [Candidate("dense", "none", "torch")] + [
        Candidate(f"pruned-{r}", PRUNED.format(r=r), "torch") for r in (0.125, 0.25, 0.375, 0.5)
    ]
    space += [
        Candidate("bad-pass", "no-such-pass", "torch"),
        Candidate("pruned-0.5-again", space[4].pipeline, "torch"),
        Candidate("sparse-0.5", "sparsify{pattern=unstructured,sparsity=0.5}", "torch"),
    ]

    def run(engine: str) -> Any:
        return sparsec.search(
            _Classifier().eval(),
            batches[0],
            calibration=batches,
            budget=0.5,
            candidates=space,
            engine=engine,  # type: ignore[arg-type]
            work_dir=tmp_path / engine,
        )

    sequential, on_ray = run("sequential"), run("ray")
    assert len(space) >= 8
    rows = [(m.name, m.quality, m.drop, m.ms, m.error) for m in sequential.measured]
    assert rows == [(m.name, m.quality, m.drop, m.ms, m.error) for m in on_ray.measured]
    assert sum(m.ok for m in sequential.measured) == 7 and "no-such-pass" in str(rows[5][4])
    assert on_ray.chosen is not None and sequential.chosen is not None
    assert on_ray.chosen.name == sequential.chosen.name


class _Interrupted(BaseException):
    """Stands for a search killed between scoring and timing (not an error it records)."""


def test_a_search_stopped_before_timing_resumes_without_scoring_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = [torch.randn(8, 32, generator=torch.Generator().manual_seed(2)) for _ in range(3)]
    space = [Candidate("dense", "none", "torch"), Candidate("half", PRUNED.format(r=0.5), "torch")]
    results = tmp_path / "s.json"

    def killed(*args: Any, **kwargs: Any) -> float:
        raise _Interrupted

    def search(progress: Any = None) -> Any:
        return sparsec.search(
            _Classifier().eval(),
            batches[0],
            calibration=batches,
            candidates=space,
            results=results,
            engine="sequential",
            progress=progress,
        )

    monkeypatch.setattr(run_module, "time_artifact", killed)
    with pytest.raises(_Interrupted):
        search()
    monkeypatch.setattr(run_module, "time_artifact", lambda d, i, *, threads, repeats: 1.0)
    seen: list[str] = []
    result = search(seen.append)
    assert not any("scored" in message for message in seen), seen
    assert [m for m in seen if m.startswith("timing")] == ["timing dense", "timing half"]
    assert all(m.ok and m.ms == 1.0 for m in result.measured)
