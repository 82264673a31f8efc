"""Calibration data: the input batches (and optional loss) that data-aware passes read.

Rules:
- batches are an iterable that can be iterated more than once (a list, a DataLoader), each
  batch shaped like the example inputs (a tensor, a tuple of positional inputs, or a dict);
- `loss_fn(outputs, batch)` turns outputs into a scalar loss for gradient criteria; without
  it, gradient criteria refuse with a PreconditionError naming the fix;
- `inputs(batch)` picks the model inputs out of a batch that carries more (labels): with
  `(x, y)` batches, `inputs=lambda b: b[0]` feeds `x` to the model and the whole batch to
  `loss_fn`; by default the whole batch is the model input;
- passes stream over the batches and keep running sums, never the activations.

Example:
    loss = lambda out, batch: F.cross_entropy(out, batch[1])
    calibration = Calibration(loader, loss_fn=loss, inputs=lambda batch: batch[0])
    sparsec.compile(model, x, pipeline="taylor-50", calibration=calibration)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sparsec.errors import PreconditionError
from sparsec.ir.inputs import normalize_inputs

__all__ = ["Calibration", "LossFn", "require_calibration"]

LossFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Calibration:
    """Input batches plus an optional loss for gradient-based criteria."""

    batches: Iterable[Any]
    loss_fn: LossFn | None = None
    max_batches: int | None = None
    inputs: Callable[[Any], Any] | None = None

    def __iter__(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Each batch's model inputs as (args, kwargs), ready to call a module with."""
        for args, kwargs, _ in self.with_batches():
            yield args, kwargs

    def with_batches(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any], Any]]:
        """Each batch as (args, kwargs, raw batch): the raw batch is what `loss_fn` reads."""
        for index, batch in enumerate(self.batches):
            if self.max_batches is not None and index >= self.max_batches:
                return
            args, kwargs = normalize_inputs(batch if self.inputs is None else self.inputs(batch))
            yield args, kwargs, batch

    def require_loss(self, who: str) -> LossFn:
        if self.loss_fn is None:
            raise PreconditionError(
                f"{who} needs gradients, so calibration needs a loss: pass "
                "Calibration(batches, loss_fn=lambda outputs, batch: ...)"
            )
        return self.loss_fn


def require_calibration(calibration: Calibration | None, who: str) -> Calibration:
    """The calibration data, or a PreconditionError telling the user how to provide it."""
    if calibration is None:
        raise PreconditionError(
            f"{who} needs calibration data: pass calibration=Calibration(batches) to "
            "sparsec.compile() (or AnalysisManager(graph, calibration=...))"
        )
    return calibration
