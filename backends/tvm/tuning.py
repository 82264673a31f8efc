"""Meta-schedule tuning of a Relax program's dense TIR functions, with a persistent database.

Rules:
- tasks are the TIR functions of the module after Relax's zero pipeline (legalize, fuse),
  `FuseTransposeMatmul` applied first so a linear is one `NT_matmul` task that reads its
  lifted weight as is (without it every call transposes every weight); a function is tuned
  only if every buffer shape is static (meta-schedule measures a candidate on concrete
  tensors) and it is not scheduled already (sparsec's sparse kernels say `tirx.is_scheduled`);
- symbolic dims: `tune_module(..., input_shapes=...)` adds `TUNED_ENTRY`, a copy of `main`
  with every symbolic dim of the user inputs bound to the example input's size, whose
  functions are static and tuned; `main` keeps the untuned dynamic code for every other
  shape, and the executable calls `TUNED_ENTRY` when the input shapes match exactly. A
  module with no symbolic dims is tuned as it is;
- records live in a JSONDatabase in `database_dir(target, tuning_dir)`: a folder per
  target (CPU, cores, TVM version) under `tuning_dir`, by default
  `$XDG_CACHE_HOME/sparsec/tvm-tuning` (`~/.cache/sparsec/tvm-tuning`); meta-schedule's
  logs go to its `logs/` folder, not to the console;
- a task whose workload (the TIR function, compared structurally) has a valid record is
  reused and not tuned again, whatever the budget; the missing tasks share the budget:
  `trials` candidates in all, `trials_per_task` each (default: an even share, so no task
  is starved), in rounds of at most 16 so the cost model learns between rounds. A task
  left without a valid record keeps its untuned code, and the result says so. To tune
  further, point `tuning_dir` elsewhere or delete the target's folder;
- a time budget (`TuneBudget.seconds`) is checked when a round would start, not during
  one (stopping it would waste candidates already built), so tuning overshoots by the
  rounds in flight: one per task at most, as meta-schedule starts every task's first round
  before it measures any. The clock starts with `tune_module` (a wait for the lock counts:
  the caller waits too), but the first round always runs: the setup before it (~5 s here)
  is paid anyway, and one round turns it into records. The result says what was cut;
- readers hold the same `flock` shared, so a record half-written by a tuner is never read;
- a compile that tunes holds an exclusive `flock` on the folder's `lock` file from reading
  which tasks lack records to the last record written: two processes appending to one
  JSONDatabase would interleave records and tune the same tasks twice. The second waits
  up to `TuneBudget.lock_timeout_s`, then re-reads the records (often all it needed). A
  compile that tunes nothing writes nothing and takes the lock shared only; without
  `fcntl` (Windows) there is no lock;
- candidates are built in this process: TVM's LocalBuilder starts fresh worker processes
  for every batch, and each spends ~35 s importing `tvm.s_tir.tensor_intrin`. They run in
  one worker process (LocalRunner) with the target's `num-cores` threads, so a candidate
  that crashes cannot take the compile down;
- for a CPU target only the tensor intrinsics of this CPU family are registered (x86: 0.3 s)
  instead of all of `tvm.s_tir.tensor_intrin` (26–37 s here, 16 s of it CUDA's);
- tuning is for CPU (LLVM) targets with `num-cores` set (`target.build_target` sets it); it
  needs the packages xgboost (the cost model), psutil and cloudpickle.

Example:
    result = tune_module(module, build_target("cpu", 2), TuneBudget(trials=64),
                         input_shapes=[(128, 768)])
    library = compile_module(result.module, target)     # relax_executable
    result.note()   # "tuned 2 of 3 TVM tasks (64 trials, 41.2 s); reused 1; records in ..."
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import tvm
from tvm import relax, tirx
from tvm.ir.utils import derived_object
from tvm.relax.utils import copy_with_new_vars
from tvm.target import Target, codegen

from sparsec.errors import BackendError

__all__ = [
    "DEFAULT_TUNING_DIR",
    "TUNED_ENTRY",
    "SearchStrategy",
    "TuneBudget",
    "TuningResult",
    "apply_database",
    "check_seconds",
    "database_dir",
    "specialize",
    "tune_module",
]

TUNED_ENTRY = "main_tuned"
DEFAULT_TUNING_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsec" / "tvm-tuning"
)
_INTRINSICS = "tvm.s_tir.tensor_intrin"
# the intrinsics module of each LLVM triple's CPU family (what the CPU schedule rules use)
_CPU_INTRINSICS = {
    "x86_64": "x86",
    "i686": "x86",
    "aarch64": "arm_cpu",
    "arm": "arm_cpu",
    "riscv64": "riscv_cpu",
    "riscv32": "riscv_cpu",
}
# candidates per search round: TVM's default is 64, but with a budget of tens of trials
# small rounds let the cost model learn between them ([128, 768] x [3072, 768], 1 thread,
# 64 trials: 5.9 ms in 138 s with rounds of 16, 11.1 ms in 234 s with one round of 64)
_MAX_TRIALS_PER_ITER = 16
_RUNNER_TIMEOUT_S = 60.0
_LOCK_FILE = "lock"
_LOGGER = "sparsec.tvm_tuning"


class SearchStrategy(Enum):
    """How meta-schedule picks candidates: evolution guided by its cost model, or at random."""

    EVOLUTIONARY = "evolutionary"
    RANDOM = "replay-trace"


@dataclass(frozen=True)
class TuneBudget:
    """How much tuning one compile may do.

    Rules:
    - `trials` (>= 1): candidates measured in all, over the tasks that have no record yet;
    - `trials_per_task` (>= 1 or None): the most one task gets; None: an even share,
      ceil(trials / tasks);
    - `measure_ms` (>= 1): each candidate runs at least this long per measurement (TVM's
      `min_repeat_ms`, default 100); lower it only for smoke tests;
    - `search`: see SearchStrategy; RANDOM skips the evolutionary search's cost-model
      rounds (seconds each), for small budgets and tests;
    - `seconds` (> 0 or None: no limit): wall-clock time after which no new round starts
      (the first always does); rounds already started finish, so tuning may overshoot by
      a round per task (tens of seconds each with EVOLUTIONARY);
    - `lock_timeout_s` (>= 0): how long to wait for another process tuning into the same
      database folder before giving up (BackendError); 0: do not wait.
    """

    trials: int
    trials_per_task: int | None = None
    measure_ms: int = 100
    search: SearchStrategy = SearchStrategy.EVOLUTIONARY
    seconds: float | None = None
    lock_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("trials", "measure_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BackendError(f"TuneBudget.{name} must be an int >= 1, not {value!r}")
        per_task = self.trials_per_task
        if per_task is not None and (
            isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1
        ):
            raise BackendError(
                f"TuneBudget.trials_per_task must be an int >= 1 or None, not {per_task!r}"
            )
        if not isinstance(self.search, SearchStrategy):
            raise BackendError(
                f"TuneBudget.search must be a SearchStrategy, not {self.search!r}; valid: "
                f"{', '.join(s.name for s in SearchStrategy)}"
            )
        check_seconds(self.seconds, "TuneBudget.seconds")
        if not (_positive_number(self.lock_timeout_s) or self.lock_timeout_s == 0):
            raise BackendError(
                f"TuneBudget.lock_timeout_s must be a number of seconds >= 0 (0: do not wait "
                f"for another tuner), not {self.lock_timeout_s!r}"
            )


def check_seconds(value: object, field: str) -> None:
    """A time budget is None (no limit) or a finite number of seconds > 0."""
    if value is not None and not _positive_number(value):
        name = field.rsplit(".", 1)[-1]
        raise BackendError(
            f"{field} must be a number of seconds > 0, or None for no time limit, not "
            f"{value!r}. Fix: e.g. {name}=600, or leave it out."
        )


def _positive_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True)
class TuningResult:
    """A module with the database's best schedules applied, and what tuning did to get there.

    Rules:
    - `tuned`: tasks tuned by this call that now have a record; `reused`: tasks whose
      records were already in the database; `failed`: tasks tuned without one valid
      candidate (they keep untuned code); `skipped`: TIR functions not tunable (a symbolic
      shape, or scheduled already);
    - `trials`: candidates this call measured; `seconds`: time spent tuning (0 if none);
    - `tuned_shapes`: the input shapes `TUNED_ENTRY` serves, or None if the module has no
      such entry (it was static, or no input shapes were given);
    - `stopped_by_time`: the time budget kept a round from starting (tuning ended before
      the trial budget was spent); `unreached`: tasks it stopped before their first round
      (untuned code, not a failure: a larger `seconds` tunes them); `budget`: what was asked.
    """

    module: tvm.IRModule
    database: Path
    tuned: tuple[str, ...]
    reused: tuple[str, ...]
    failed: tuple[str, ...]
    skipped: int
    trials: int
    seconds: float
    tuned_shapes: tuple[tuple[int, ...], ...] | None
    budget: TuneBudget | None = None
    stopped_by_time: bool = False
    unreached: tuple[str, ...] = ()

    def note(self) -> str:
        """One line for the report: what was tuned, what was reused, where the records are."""
        total = len(self.tuned) + len(self.reused) + len(self.failed) + len(self.unreached)
        parts = [
            f"tuned {len(self.tuned)} of {total} TVM tasks ({self.trials} trials, "
            f"{self.seconds:.1f} s)",
            f"reused {len(self.reused)}",
        ]
        if self.stopped_by_time and self.budget is not None and self.budget.seconds is not None:
            parts.append(
                f"stopped by the {self.budget.seconds:g} s time budget after {self.trials} of "
                f"{self.budget.trials} trials"
            )
        if self.unreached:
            parts.append(
                f"{len(self.unreached)} not reached in time (untuned): {', '.join(self.unreached)}"
            )
        if self.failed:
            parts.append(f"{len(self.failed)} without a valid candidate: {', '.join(self.failed)}")
        if self.skipped:
            parts.append(f"{self.skipped} not tunable (symbolic shape or hand-scheduled)")
        shapes = (
            f"; tuned for input shapes {[list(s) for s in self.tuned_shapes]}, other shapes run "
            "untuned code"
            if self.tuned_shapes is not None
            else ""
        )
        return "; ".join(parts) + f"; records in {self.database}" + shapes


def database_dir(target: Target, tuning_dir: Path | None = None) -> Path:
    """The folder of `target`'s records under `tuning_dir` (default DEFAULT_TUNING_DIR)."""
    _check_target(target)
    mcpu = str(target.attrs.get("mcpu", "generic"))
    cores = int(target.attrs["num-cores"])
    digest = hashlib.sha256(f"{target} {tvm.__version__}".encode()).hexdigest()[:10]
    key = f"{target.kind.name}-{mcpu}-{cores}c-tvm{tvm.__version__}-{digest}"
    return (tuning_dir if tuning_dir is not None else DEFAULT_TUNING_DIR) / key


def specialize(
    module: tvm.IRModule, input_shapes: Sequence[Sequence[int]]
) -> tuple[tvm.IRModule, tuple[tuple[int, ...], ...] | None]:
    """Add `TUNED_ENTRY`: `main` with the user inputs' symbolic dims bound to `input_shapes`.

    `main`'s first len(input_shapes) parameters are the user inputs. Returns the module
    unchanged and None when those inputs have no symbolic dims.
    """
    main = module["main"]
    params = list(main.params)
    if len(input_shapes) > len(params):
        raise BackendError(
            f"got {len(input_shapes)} input shapes for a Relax main with {len(params)} "
            "parameters. Fix: pass one shape per user input tensor."
        )
    copy = copy_with_new_vars(main)
    bindings: dict[tirx.Var, int] = {}
    for index, (param, shape) in enumerate(zip(copy.params, input_shapes, strict=False)):
        dims = list(param.ty.shape.values)
        if len(dims) != len(shape):
            raise BackendError(
                f"input {index} of the Relax main is {param.ty}, its example shape is "
                f"{list(shape)}. Fix: give the example inputs the traced program was built from."
            )
        for dim, size in zip(dims, shape, strict=True):
            if isinstance(dim, tirx.Var):
                if bindings.setdefault(dim, int(size)) != int(size):
                    raise BackendError(
                        f"symbolic dim {dim} of the Relax main is {bindings[dim]} in one input "
                        f"and {size} in input {index}. Fix: give example inputs whose shared "
                        "dims agree."
                    )
            elif isinstance(dim, tirx.IntImm) and int(dim) != int(size):
                raise BackendError(
                    f"input {index} of the Relax main is {param.ty}, its example shape is "
                    f"{list(shape)}. Fix: give the example inputs the program was traced with."
                )
    if not bindings:
        return module, None
    entry = copy.bind_symbolic_vars(bindings).with_attr("global_symbol", TUNED_ENTRY)
    specialized = module.clone() if hasattr(module, "clone") else tvm.IRModule(module.functions)
    specialized[TUNED_ENTRY] = entry
    return specialized, tuple(tuple(int(d) for d in shape) for shape in input_shapes)


def apply_database(module: tvm.IRModule, target: Target, directory: Path) -> tvm.IRModule:
    """Replace each TIR function that has a record in `directory` by its best schedule."""
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")
    with target, database, tvm.transform.PassContext(opt_level=3):
        return relax.transform.MetaScheduleApplyDatabase()(module)


def tune_module(
    module: tvm.IRModule,
    target: Target,
    budget: TuneBudget,
    tuning_dir: Path | None = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
) -> TuningResult:
    """Tune `module`'s static TIR functions that have no record yet, then apply the records."""
    _check_target(target)
    _check_packages()
    started = time.perf_counter()
    directory = database_dir(target, tuning_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackendError(
            f"cannot create the tuning database folder {directory}: {exc}. Fix: pass a "
            "writable tuning_dir."
        ) from exc
    tuned_shapes = None
    if input_shapes is not None:
        module, tuned_shapes = specialize(module, input_shapes)
    _load_tensor_intrinsics(target)
    from tvm.s_tir import meta_schedule as ms

    try:
        with target:
            module = relax.get_pipeline("zero")(relax.transform.FuseTransposeMatmul()(module))
        tasks = ms.relax_integration.extract_tasks(module, target)
    except Exception as exc:  # TVM raises its own error types from C++
        raise BackendError(
            f"TVM could not prepare the program for tuning: {exc}. Fix: set tune_trials=0."
        ) from exc
    tunable = [task for task in tasks if _tunable(task.dispatched[0]["main"])]
    with _database_lock(directory, budget.lock_timeout_s, shared=True):
        database = _open_database(directory)
    reused = tuple(task.task_name for task in tunable if _has_record(database, task))
    todo = [task for task in tunable if task.task_name not in reused]
    tuned: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    unreached: tuple[str, ...] = ()
    stopped = False
    trials = 0
    if todo:  # tuning holds the lock exclusively, and must see what the last holder wrote
        with _database_lock(directory, budget.lock_timeout_s):
            database = _open_database(directory)
            reused = tuple(task.task_name for task in tunable if _has_record(database, task))
            todo = [task for task in tunable if task.task_name not in reused]
            records_before = len(database)
            if todo:
                deadline = None if budget.seconds is None else started + budget.seconds
                stopped, cut = _tune(todo, target, budget, database, directory, deadline)
                trials = len(database) - records_before
                missing = [i for i, task in enumerate(todo) if not _has_record(database, task)]
                tuned = tuple(t.task_name for i, t in enumerate(todo) if i not in missing)
                failed = tuple(todo[i].task_name for i in missing if i not in cut)
                unreached = tuple(todo[i].task_name for i in missing if i in cut)
    seconds = time.perf_counter() - started if todo else 0.0
    try:
        with _database_lock(directory, budget.lock_timeout_s, shared=True):
            module = apply_database(module, target, directory)
    except BackendError:
        raise
    except Exception as exc:  # TVM raises its own error types from C++
        raise BackendError(
            f"TVM could not apply the tuning records in {directory}: {exc}. Fix: delete that "
            "folder (its records may come from another TVM build) and compile again."
        ) from exc
    return TuningResult(
        module,
        directory,
        tuned,
        reused,
        failed,
        len(tasks) - len(tunable),
        trials,
        seconds,
        tuned_shapes,
        budget,
        stopped,
        unreached,
    )


def _open_database(directory: Path) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=str(directory), module_equality="structural")


@contextmanager
def _database_lock(directory: Path, timeout_s: float, *, shared: bool = False) -> Iterator[None]:
    """Hold a `flock` on `directory`'s `lock` file, waiting up to `timeout_s`.

    Tuners hold it exclusively; readers (`shared=True`) hold it shared, so they never read
    a record a tuner is still writing. A read-only database has no writer: reading it
    takes no lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks to take
        yield
        return
    path = directory / _LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if shared:
            yield
            return
        raise BackendError(
            f"cannot open the tuning lock {path}: {exc}. Fix: pass a writable tuning_dir."
        ) from exc
    try:
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(
                        f"another process has been tuning into {directory} for over "
                        f"{timeout_s:g} s (it holds {path}). Fix: wait for that compile to "
                        "finish (its records are then reused), or point tuning_dir elsewhere."
                    ) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 1.0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _check_target(target: Target) -> None:
    if target.kind.name != "llvm":
        raise BackendError(
            f"meta-schedule tuning here is for CPU (llvm) targets, not {target.kind.name}: "
            "measuring GPU candidates needs the GPU. Fix: set tune_trials=0 for 'cuda'."
        )
    if "num-cores" not in target.attrs:
        raise BackendError(
            f"the target {target} has no 'num-cores'; meta-schedule needs it to size parallel "
            "loops. Fix: build the target with backends.tvm.target.build_target."
        )


def _check_packages() -> None:
    missing = [
        name
        for name in ("xgboost", "psutil", "cloudpickle")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise BackendError(
            f"meta-schedule tuning needs the packages {missing}, which are not installed. "
            f"Fix: pip install {' '.join(missing)}, or set tune_trials=0."
        )


def _load_tensor_intrinsics(target: Target) -> None:
    """Register the tensor intrinsics the CPU schedule rules name, not every platform's."""
    if _INTRINSICS in sys.modules:
        return
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    family = _CPU_INTRINSICS.get(triple.split("-")[0])
    spec = importlib.util.find_spec(_INTRINSICS)
    if family is None or spec is None:
        importlib.import_module(_INTRINSICS)
        return
    # the package without its __init__ (which imports every platform's intrinsics); a later
    # import of one of its submodules (e.g. dlight's CUDA rules) still loads that one
    package = importlib.util.module_from_spec(spec)
    sys.modules[_INTRINSICS] = package
    import tvm.s_tir

    tvm.s_tir.tensor_intrin = package  # type: ignore[attr-defined]
    try:
        importlib.import_module(f"{_INTRINSICS}.{family}")
    except Exception:
        del sys.modules[_INTRINSICS]
        del tvm.s_tir.tensor_intrin  # type: ignore[attr-defined]
        raise


def _tunable(func: Any) -> bool:
    if not isinstance(func, tirx.PrimFunc):
        return False
    if func.attrs is not None and bool(func.attrs.get("tirx.is_scheduled", False)):
        return False
    for param in func.params:
        shape = getattr(param.ty, "shape", None)
        if shape is None or not all(isinstance(dim, tirx.IntImm) for dim in shape):
            return False
    return True


def _has_record(database: Any, task: Any) -> bool:
    workload = task.dispatched[0]
    if not database.has_workload(workload):
        return False
    return bool(database.get_top_k(database.commit_workload(workload), 1))


def _tune(
    tasks: list[Any],
    target: Target,
    budget: TuneBudget,
    database: Any,
    directory: Path,
    deadline: float | None,
) -> tuple[bool, set[int]]:
    """Tune `tasks` in one task-scheduler run; (stopped by the deadline, tasks it cut off).

    The deadline (a `time.perf_counter` value) is checked by each task's search strategy
    when the scheduler asks it for a round, so the gradient scheduler and the search state
    (which candidates were measured) carry over between rounds, as without a deadline.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner
    from tvm.s_tir.meta_schedule.utils import fork_seed

    cores = int(target.attrs["num-cores"])
    per_task = budget.trials_per_task or math.ceil(budget.trials / len(tasks))
    loggers = _task_loggers(tasks, directory / "logs")
    clock = _Clock(deadline)
    runner = None
    try:
        contexts = [
            ms.TuneContext(
                mod=task.dispatched[0],
                target=task.target,
                space_generator="post-order-apply",
                search_strategy=_timed_search(
                    ms.search_strategy.SearchStrategy.create(budget.search.value), clock, index
                ),
                task_name=task.task_name,
                logger=logger,
                rand_state=seed,
                num_threads=cores,
            ).clone()
            for index, (task, logger, seed) in enumerate(
                zip(tasks, loggers, fork_seed(0, n=len(tasks)), strict=True)
            )
        ]
        runner = LocalRunner(
            timeout_sec=_RUNNER_TIMEOUT_S,
            evaluator_config=EvaluatorConfig(number=3, repeat=1, min_repeat_ms=budget.measure_ms),
            initializer=_thread_pool_initializer(cores),
        )
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=[float(task.weight) for task in tasks],
            work_dir=str(directory),
            max_trials_global=budget.trials,
            max_trials_per_task=per_task,
            num_trials_per_iter=min(_MAX_TRIALS_PER_ITER, per_task),
            builder=_in_process_builder(),
            runner=runner,
            database=database,
            cost_model="xgb",
        )
    except BackendError:
        raise
    except Exception as exc:  # meta-schedule raises TVM errors and bare ones from its workers
        raise BackendError(
            f"meta-schedule tuning failed: {exc}. Logs: {directory / 'logs'}. Fix: set "
            "tune_trials=0, or report the model."
        ) from exc
    finally:
        if runner is not None:
            runner.pool.shutdown()
        for logger in loggers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()
    return bool(clock.stopped), clock.stopped - clock.started


class _Clock:
    """The deadline one tuning run's search strategies share, and what it stopped."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.started: set[int] = set()  # tasks that generated a round
        self.stopped: set[int] = set()  # tasks refused a round by the deadline

    def allows(self, task: int) -> bool:
        late = self.deadline is not None and time.perf_counter() >= self.deadline
        if late and self.started:  # the first round always runs: its setup is paid anyway
            self.stopped.add(task)
            return False
        self.started.add(task)
        return True


def _timed_search(inner: Any, clock: _Clock, task: int) -> Any:
    """`inner` (a meta-schedule search strategy) that ends its task once `clock` runs out."""
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class TimedSearch(PySearchStrategy):  # type: ignore[misc]
        """Delegates to `inner`; no candidates (the task ends) after the deadline."""

        def _initialize_with_tune_context(self, context: Any) -> None:
            inner._initialize_with_tune_context(context)

        def pre_tuning(self, *args: Any) -> None:
            inner.pre_tuning(*args)

        def post_tuning(self) -> None:
            inner.post_tuning()

        def generate_measure_candidates(self) -> Any:
            # None ends the task in the scheduler, which joins the rounds still running
            return inner.generate_measure_candidates() if clock.allows(task) else None

        def notify_runner_results(self, measure_candidates: Any, results: Any) -> None:
            inner.notify_runner_results(measure_candidates, results)

        def clone(self) -> Any:
            return _timed_search(inner.clone(), clock, task)

    return TimedSearch()


def _task_loggers(tasks: list[Any], folder: Path) -> list[logging.Logger]:
    """One file logger per task (meta-schedule's own setup also prints every round)."""
    folder.mkdir(parents=True, exist_ok=True)
    loggers = []
    for index, task in enumerate(tasks):
        logger = logging.getLogger(f"{_LOGGER}.{folder.parent.name}.{index}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        handler = logging.FileHandler(folder / f"{task.task_name[:100]}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        loggers.append(logger)
    return loggers


def _thread_pool_initializer(threads: int) -> Any:
    """A runner-worker initializer (pickled by value) that sizes TVM's thread pool."""

    def initialize() -> None:
        import tvm_ffi

        tvm_ffi.get_global_func("runtime.config_threadpool")(1, threads)  # 1: big cores

    return initialize


def _in_process_builder() -> Any:
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    @derived_object
    class InProcessBuilder(PyBuilder):  # type: ignore[misc]
        """Builds candidates here: TVM's LocalBuilder pays ~35 s of imports per batch."""

        def build(self, build_inputs: list[Any]) -> list[Any]:
            from tvm.driver import build as tvm_build

            results = []
            for build_input in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
                    library = tvm_build(mod, target=build_input.target)
                    results.append(BuilderResult(default_export(library), None))
                except Exception as exc:  # a candidate that does not build is a failed trial
                    results.append(BuilderResult(None, f"in-process build failed: {exc}"))
            return results

    return InProcessBuilder()
