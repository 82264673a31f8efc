"""Calibration data: the input batches (and optional loss) that data-aware passes read.

Rules:
- batches are an iterable that can be iterated more than once (a list, a DataLoader), each
  batch shaped like the example inputs (a tensor, a tuple of positional inputs, or a dict);
- `loss_fn(outputs, batch)` turns outputs into a scalar loss for gradient criteria; without
  it, gradient criteria refuse with a PreconditionError naming the fix;
- passes stream over the batches and keep running sums, never the activations.

Example:
    sparsec.compile(model, x, pipeline="taylor-50", calibration=Calibration(loader, loss_fn))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sparsec.errors import PreconditionError
from sparsec.frontends import normalize_inputs

__all__ = ["Calibration", "LossFn", "require_calibration"]

LossFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Calibration:
    """Input batches plus an optional loss for gradient-based criteria."""

    batches: Iterable[Any]
    loss_fn: LossFn | None = None
    max_batches: int | None = None

    def __iter__(self) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Each batch as (args, kwargs), ready to call a module with."""
        for index, batch in enumerate(self.batches):
            if self.max_batches is not None and index >= self.max_batches:
                return
            yield normalize_inputs(batch)

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
