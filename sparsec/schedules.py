"""Pruning schedules: one-shot, iterative with a recovery step, and the cubic gradual schedule.

Rules:
- a schedule prunes a `Graph` in place through a pipeline that `make_passes(ratio)` builds,
  where `ratio` is what this step removes *of the current graph*; cumulative targets
  T_1 < ... < T_N of the original become step ratios 1 - (1 - T_k) / (1 - T_{k-1});
- between steps `callback(step, graph)` runs (fine-tune there: the graph's module trains);
  every step gets a fresh AnalysisManager, since training changes weights that cached
  scores were computed from;
- `cubic_sparsity` is Zhu & Gupta's gradual schedule
  s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))³, flat outside [t_0, t_1];
- `finetune` is a plain recovery loop in training mode (BatchNorm learns batch statistics,
  dropout is on), restoring each module's mode afterwards; give it the user's module tree
  (`compiled.module`, or `materialize(model, graph).module`, which shares the graph's
  tensors); a traced graph module only runs as traced (`training=False`; it refuses
  `.train()`), for which `recalibrate-bn` refreshes statistics after.

Example:
    make = lambda r: [TaylorImportance(), PruneChannels(ratio=r, target="macs")]
    tune = lambda step, g: finetune(materialize(model, g).module, loader, loss_fn, epochs=1)
    prune_iteratively(graph, calibration, 0.5, steps=3, make_passes=make, callback=tune)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch

from sparsec.calibration import Calibration, LossFn
from sparsec.errors import PreconditionError
from sparsec.ir import Graph
from sparsec.ir.inputs import normalize_inputs
from sparsec.pipeline import AnalysisManager, Pass, PassManager, PipelineRun

__all__ = [
    "cubic_sparsity",
    "finetune",
    "one_shot",
    "prune_iteratively",
    "restore_modes",
    "switch_mode",
    "step_ratios",
    "step_targets",
]

Schedule = Literal["linear", "cubic"]
MakePasses = Callable[[float], Sequence[Pass]]
Callback = Callable[[int, Graph], None]


def cubic_sparsity(step: int, *, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's target sparsity at `step` (see module docstring)."""
    if end <= begin:
        raise PreconditionError(f"cubic_sparsity needs end > begin, got begin={begin}, end={end}")
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def step_targets(final: float, steps: int, schedule: Schedule = "linear") -> list[float]:
    """Cumulative fractions removed after each of `steps` steps, ending at `final`."""
    if steps < 1 or not 0.0 <= final < 1.0:
        raise PreconditionError(
            f"need steps >= 1 and 0 <= final < 1, got steps={steps}, final={final}"
        )
    if schedule == "linear":
        return [final * (k + 1) / steps for k in range(steps)]
    return [cubic_sparsity(k + 1, final=final, begin=0, end=steps) for k in range(steps)]


def step_ratios(targets: Sequence[float]) -> list[float]:
    """Per-step ratios of the current graph that reach the cumulative `targets`."""
    ratios, done = [], 0.0
    for target in targets:
        ratios.append(1.0 - (1.0 - target) / (1.0 - done))
        done = target
    return ratios


def prune_iteratively(
    graph: Graph,
    calibration: Calibration | None,
    final: float,
    *,
    steps: int,
    make_passes: MakePasses,
    callback: Callback | None = None,
    schedule: Schedule = "linear",
) -> list[PipelineRun]:
    """Prune `graph` to `final` in `steps` steps, calling `callback` after each."""
    runs = []
    for step, ratio in enumerate(step_ratios(step_targets(final, steps, schedule))):
        am = AnalysisManager(graph, calibration)
        with torch.no_grad():
            runs.append(PassManager(make_passes(ratio)).run(graph, am))
        if callback is not None:
            callback(step, graph)
    return runs


def one_shot(
    graph: Graph, calibration: Calibration | None, final: float, make_passes: MakePasses
) -> PipelineRun:
    """Prune `graph` to `final` in one step."""
    (run,) = prune_iteratively(graph, calibration, final, steps=1, make_passes=make_passes)
    return run


def switch_mode(module: torch.nn.Module, training: bool, fix: str) -> None:
    """`module.train(training)`, or a PreconditionError ending in `fix` for a traced graph
    module, which refuses mode switches."""
    try:
        module.train(training)
    except NotImplementedError as exc:
        raise PreconditionError(
            f"{type(module).__name__} cannot switch to training mode (a traced graph module "
            f"runs as traced). Fix: {fix}"
        ) from exc


def restore_modes(modes: dict[torch.nn.Module, bool]) -> None:
    """Set each module's flag back (directly: traced graph modules refuse `.train()`)."""
    for module, training in modes.items():
        module.training = training


def finetune(
    module: torch.nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    inputs: Callable[[Any], Any] | None = None,
    training: bool = True,
) -> list[float]:
    """Train `module` with Adam in training mode; returns the mean loss of each epoch.

    `loss_fn(outputs, batch)` and `inputs(batch)` work as in `Calibration`; `training=False`
    keeps the module's current mode (a traced graph module can only run that way).
    """
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    history = []
    modes = {m: m.training for m in module.modules()}
    if training:
        switch_mode(
            module,
            True,
            "fine-tune compiled.module or materialize(model, graph).module, or pass "
            "training=False to train it as traced",
        )
    with contextlib.ExitStack() as stack:
        stack.callback(restore_modes, modes)
        stack.enter_context(torch.enable_grad())
        for _ in range(epochs):
            total, count = 0.0, 0
            for batch in batches:
                args, kwargs = normalize_inputs(batch if inputs is None else inputs(batch))
                loss = loss_fn(module(*args, **kwargs), batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, count = total + float(loss.detach()), count + 1
            history.append(total / max(count, 1))
    return history
