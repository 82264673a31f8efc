"""Meta-schedule tuning of the tvm backend's dense code: options are validated; a tuned
RELAX build writes a record database, matches torch at the tuned shape and at others, and
round-trips as an artifact; a second compile of the same workload reuses the records and
tunes nothing; a time budget stops tuning early; a tuner waits for another's database lock."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("tvm")
for _package in ("xgboost", "psutil", "cloudpickle"):  # meta-schedule's cost model and workers
    pytest.importorskip(_package)

from sparsec.backends.base import BackendOptions  # noqa: E402
from sparsec.backends.tvm import TvmBackend, TvmMode, TvmOptions, tuning  # noqa: E402
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
        ({"mode": TvmMode.RELAX, "tune_seconds": 30}, "sets tune_seconds but tune_trials is 0"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_seconds": 0}, "tune_seconds must be"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_seconds": -1.5}, "tune_seconds must"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_seconds": True}, "tune_seconds must"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_seconds": "30"}, "tune_seconds must"),
        ({"mode": TvmMode.RELAX, "tune_trials": 8, "tune_seconds": math.inf}, "tune_seconds"),
        ({"tune_seconds": math.nan}, "tune_seconds must be a number of seconds > 0"),
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


def test_time_budget_is_validated() -> None:
    options = TvmOptions(mode=TvmMode.RELAX, tune_trials=8, tune_seconds=30)
    assert options.tune_budget() == TuneBudget(8, seconds=30)
    assert TuneBudget(4, seconds=0.5).seconds == 0.5 and TuneBudget(4).seconds is None
    for bad in (0, -1, True, "60", math.nan, math.inf):
        with pytest.raises(BackendError, match=r"TuneBudget.seconds must be .*Fix: e.g. seconds="):
            TuneBudget(4, seconds=bad)  # type: ignore[arg-type]
    assert TuneBudget(4, lock_timeout_s=0).lock_timeout_s == 0  # 0: do not wait
    for bad in (-1, True, None, math.nan):
        with pytest.raises(BackendError, match="TuneBudget.lock_timeout_s must be"):
            TuneBudget(4, lock_timeout_s=bad)  # type: ignore[arg-type]


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


def test_time_budget_stops_tuning_early(graph, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # each round measures 2 candidates (~1 s here, more than the budget): the first round
    # runs, the second task's round is not started
    options = TvmOptions(
        mode=TvmMode.RELAX,
        tune_trials=4,
        tune_search=SearchStrategy.RANDOM,
        tuning_dir=tmp_path,
        tune_seconds=0.5,
    )
    executable = TvmBackend(options).lower(graph, "cpu", BackendOptions(threads=1))
    note = _note(executable)
    stopped = re.search(r"stopped by the 0.5 s time budget after (\d+) of 4 trials", note)
    assert stopped is not None and 0 < int(stopped.group(1)) < 4, note
    assert note.startswith("tuned 1 of 2 TVM tasks") and "1 not reached in time" in note, note
    records = database_dir(build_target("cpu", 1), tmp_path) / "database_tuning_record.json"
    assert len(records.read_text().splitlines()) == int(stopped.group(1))
    for batch in (EXAMPLE[0], 3):  # half-tuned entry, then the dynamic main
        x = torch.randn(batch, EXAMPLE[1])
        with torch.no_grad():
            torch.testing.assert_close(executable(x), graph.module(x), atol=ATOL, rtol=0)


@contextlib.contextmanager
def _holding_lock(folder: Path) -> Iterator[int]:
    """Hold the tuning lock of `folder` as another tuner would (a separate open file)."""
    fcntl = pytest.importorskip("fcntl")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _locked(folder: Path) -> bool:
    try:
        with _holding_lock(folder):
            return False
    except BlockingIOError:
        return True


def _no_tuning(*args: object) -> None:
    raise AssertionError("tuned although the records were there or the lock was not held")


def test_tuner_waits_for_the_lock_then_reuses_new_records(
    graph, tuned, tuning_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # another tuner holds the lock and writes the records this compile needs; the compile
    # waits for it, re-reads the database, and tunes nothing
    target = build_target("cpu", 1)
    source, folder = database_dir(target, tuning_dir), database_dir(target, tmp_path)
    waiting, released = threading.Event(), []
    real_lock = tuning._database_lock

    def spy_lock(directory: Path, timeout_s: float, **kwargs):  # type: ignore[no-untyped-def]
        waiting.set()
        return real_lock(directory, timeout_s, **kwargs)

    monkeypatch.setattr(tuning, "_database_lock", spy_lock)
    monkeypatch.setattr(tuning, "_tune", _no_tuning)

    def other_tuner(fd: int) -> None:
        assert waiting.wait(60)
        time.sleep(0.5)
        for name in ("database_workload.json", "database_tuning_record.json"):
            shutil.copy(source / name, folder / name)
        released.append(time.monotonic())
        os.close(fd)

    with _holding_lock(folder) as held:
        fd = os.dup(held)  # the same open file: closing both releases the lock
    thread = threading.Thread(target=other_tuner, args=(fd,))
    thread.start()
    try:
        module = import_graph(graph.export_program(), target).module
        result = tune_module(module, target, TuneBudget(4, lock_timeout_s=60), tmp_path, [EXAMPLE])
    finally:
        thread.join()
    assert released  # the other tuner finished while this one waited (it tuned nothing)
    assert result.tuned == () and len(result.reused) == 2 and result.trials == 0
    assert not _locked(folder)


def test_tuner_holds_the_lock_while_tuning(
    graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    target = build_target("cpu", 1)
    folder = database_dir(target, tmp_path)
    seen: list[bool] = []

    def fake_tune(tasks, *args):  # type: ignore[no-untyped-def]
        seen.append(_locked(folder))
        return False, set()

    monkeypatch.setattr(tuning, "_tune", fake_tune)
    module = import_graph(graph.export_program(), target).module
    result = tune_module(module, target, TuneBudget(4), tmp_path, [EXAMPLE])
    assert seen == [True] and not _locked(folder)
    assert len(result.failed) == 2 and not result.stopped_by_time  # the fake measured nothing


def test_lock_timeout_names_the_folder(
    graph, tuned, tuning_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tuning, "_tune", _no_tuning)
    target = build_target("cpu", 1)
    module = import_graph(graph.export_program(), target).module
    folder = database_dir(target, tmp_path)
    with _holding_lock(folder):
        started = time.monotonic()
        with pytest.raises(BackendError, match=re.escape(str(folder))) as error:
            tune_module(module, target, TuneBudget(4, lock_timeout_s=0.3), tmp_path, [EXAMPLE])
        assert time.monotonic() - started >= 0.3
        assert "wait for that compile" in str(error.value) and "tuning_dir" in str(error.value)
        # a compile whose records are all there still waits for a tuner: the record it
        # reads may be half-written
        with (
            _holding_lock(database_dir(target, tuning_dir)),
            pytest.raises(BackendError, match="wait for that compile"),
        ):
            tune_module(module, target, TuneBudget(4, lock_timeout_s=0), tuning_dir, [EXAMPLE])
    result = tune_module(module, target, TuneBudget(4, lock_timeout_s=0), tuning_dir, [EXAMPLE])
    assert len(result.reused) == 2 and result.trials == 0
