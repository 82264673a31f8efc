"""Meta-schedule tuning of the tvm backend's dense code: options are validated; a tuned
RELAX build writes a record database, matches torch at the tuned shape and at others, and
round-trips as an artifact; a second compile of the same workload reuses the records and
tunes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("tvm")
for _package in ("xgboost", "psutil", "cloudpickle"):  # meta-schedule's cost model and workers
    pytest.importorskip(_package)

from sparsec.backends.base import BackendOptions  # noqa: E402
from sparsec.backends.tvm import TvmBackend, TvmMode, TvmOptions  # noqa: E402
from sparsec.backends.tvm.importer import import_graph  # noqa: E402
from sparsec.backends.tvm.target import build_target  # noqa: E402
from sparsec.backends.tvm.tuning import (  # noqa: E402
    TUNED_ENTRY,
    SearchStrategy,
    TuneBudget,
    database_dir,
    specialize,
    tune_module,
)
from sparsec.errors import BackendError  # noqa: E402
from sparsec.frontends import trace  # noqa: E402

ATOL = 1e-4
EXAMPLE = (4, 32)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()


def _options(tuning_dir: Path, trials: int = 4) -> TvmOptions:
    # random search: no evolutionary rounds, the cheapest way to get valid records
    return TvmOptions(
        mode=TvmMode.RELAX,
        tune_trials=trials,
        tune_search=SearchStrategy.RANDOM,
        tuning_dir=tuning_dir,
    )


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return trace(_mlp(), (torch.randn(*EXAMPLE),))


@pytest.fixture(scope="module")
def tuning_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tvm-tuning")


@pytest.fixture(scope="module")
def tuned(graph, tuning_dir: Path):  # type: ignore[no-untyped-def]
    return TvmBackend(_options(tuning_dir)).lower(graph, "cpu", BackendOptions(threads=1))


def _note(executable) -> str:  # type: ignore[no-untyped-def]
    return next(note for note in executable.notes if "TVM tasks" in note)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tune_trials": -1}, "tune_trials must be an int >= 0"),
        ({"tune_trials": True}, "tune_trials must be an int >= 0"),
        ({"tune_trials": 8}, "needs mode=TvmMode.RELAX"),
        ({"mode": TvmMode.RELAX, "tuning_dir": Path("x")}, "tune_trials is 0"),
        ({"mode": TvmMode.RELAX, "tune_trials_per_task": 4}, "tune_trials is 0"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_trials_per_task": 0}, "trials_per_task"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_search": "random"}, "SearchStrategy"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tuning_dir": 3}, "tuning_dir must be"),
    ],
)
def test_options_are_validated(options: dict[str, object], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        TvmOptions(**options)  # type: ignore[arg-type]


def test_budget_and_target_are_validated(graph, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert TvmOptions().tune_budget() is None
    budget = TvmOptions(mode=TvmMode.RELAX, tune_trials=8, tuning_dir=str(tmp_path)).tune_budget()  # type: ignore[arg-type]
    assert budget == TuneBudget(8)
    for bad in ({"trials": 0}, {"trials": 4, "measure_ms": 0}):
        with pytest.raises(BackendError, match="must be an int >= 1"):
            TuneBudget(**bad)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="tuning is for target 'cpu'"):
        TvmBackend(_options(tmp_path)).lower(graph, "cuda", BackendOptions())
    with pytest.raises(BackendError, match="CPU"):
        tune_module(
            import_graph(graph.export_program(), build_target("cpu", 1)).module,
            build_target("cuda"),
            TuneBudget(4),
        )


def test_database_folder_is_keyed_by_target(tmp_path: Path) -> None:
    one, two = database_dir(build_target("cpu", 1), tmp_path), database_dir(build_target("cpu", 2))
    assert one.parent == tmp_path and re.fullmatch(r"llvm-.+-1c-tvm.+-[0-9a-f]{10}", one.name)
    assert two.name != one.name and "-2c-" in two.name
    assert two.parent.parts[-2:] == ("sparsec", "tvm-tuning")


def test_specialize_binds_symbolic_dims(graph) -> None:  # type: ignore[no-untyped-def]
    module = import_graph(graph.export_program(), build_target("cpu", 1)).module
    specialized, shapes = specialize(module, [(5, 32)])
    assert shapes == ((5, 32),)
    assert "R.Tensor((5, 32)" in specialized[TUNED_ENTRY].script()
    assert "R.Tensor((5, 32)" not in specialized["main"].script()  # main stays dynamic
    with pytest.raises(BackendError, match="example shape"):
        specialize(module, [(5, 32, 1)])
    with pytest.raises(BackendError, match="example shape"):
        specialize(module, [(5, 31)])


def test_tuned_build_writes_records_and_matches_torch(graph, tuned, tuning_dir: Path) -> None:  # type: ignore[no-untyped-def]
    note = _note(tuned)
    assert re.match(r"tuned 2 of 2 TVM tasks \(\d+ trials", note), note
    assert "reused 0" in note and "tuned for input shapes [[4, 32]]" in note
    assert tuned.tuned_shapes == (EXAMPLE,)
    folder = database_dir(build_target("cpu", 1), tuning_dir)
    assert (folder / "database_tuning_record.json").stat().st_size > 0
    assert len((folder / "database_workload.json").read_text().splitlines()) == 2
    for batch in (EXAMPLE[0], 3):  # the tuned entry, then the dynamic main
        x = torch.randn(batch, EXAMPLE[1])
        with torch.no_grad():
            torch.testing.assert_close(tuned(x), graph.module(x), atol=ATOL, rtol=0)


def test_second_compile_reuses_records(graph, tuned, tuning_dir: Path) -> None:  # type: ignore[no-untyped-def]
    records = database_dir(build_target("cpu", 1), tuning_dir) / "database_tuning_record.json"
    before = records.read_text()
    again = TvmBackend(_options(tuning_dir)).lower(graph, "cpu", BackendOptions(threads=1))
    assert _note(again).startswith("tuned 0 of 2 TVM tasks (0 trials, 0.0 s); reused 2")
    assert records.read_text() == before  # nothing measured, nothing written
    x = torch.randn(*EXAMPLE)
    with torch.no_grad():
        torch.testing.assert_close(again(x), graph.module(x), atol=ATOL, rtol=0)
    # the same through the tuning API: a result that says so
    module = import_graph(graph.export_program(), build_target("cpu", 1)).module
    result = tune_module(module, build_target("cpu", 1), TuneBudget(4), tuning_dir, [EXAMPLE])
    assert result.tuned == () and len(result.reused) == 2 and result.trials == 0
    assert result.seconds == 0.0 and result.database == records.parent


def test_tuned_build_round_trips(graph, tuned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    metadata = tuned.save(tmp_path)
    assert metadata["tuned_shapes"] == [list(EXAMPLE)]
    loaded = TvmBackend().load(tmp_path, metadata)
    assert loaded.tuned_shapes == (EXAMPLE,)
    x = torch.randn(*EXAMPLE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), graph.module(x), atol=ATOL, rtol=0)
