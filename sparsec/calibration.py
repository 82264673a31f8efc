"""Calibration data: the input batches (and optional loss) that data-aware passes read.

Rules:
- batches are an iterable that can be iterated more than once (a list, a DataLoader), each
  batch shaped like the example inputs (a tensor, a tuple of positional inputs, or a dict);
- `loss_fn(outputs, batch)` turns outputs into a scalar loss for gradient criteria; without
  it, gradient criteria refuse with a PreconditionError naming the fix;
- `inputs(batch)` picks the model inputs out of a batch that carries more (labels): with
  `(x, y)` batches, `inputs=lambda b: b[0]` feeds `x` to the model and the whole batch to
  `loss_fn`; by default the whole batch is the model input;
- passes stream over the batches and keep running sums, never the activations;
- `token_windows` cuts a language model's calibration from one token stream (SparseGPT's and
  Wanda's convention: random windows of a fixed length), and refuses a stream shorter than
  one window with a CalibrationError.

Example:
    loss = lambda out, batch: F.cross_entropy(out, batch[1])
    calibration = Calibration(loader, loss_fn=loss, inputs=lambda batch: batch[0])
    sparsec.compile(model, x, pipeline="taylor-50", calibration=calibration)
    calibration = token_windows(tokenizer(text, return_tensors="pt").input_ids[0], window=128, count=4)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sparsec.errors import CalibrationError, PreconditionError
from sparsec.ir.inputs import normalize_inputs

__all__ = ["Calibration", "LossFn", "require_calibration", "token_windows"]

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


def token_windows(
    tokens: torch.Tensor, *, window: int, count: int, batch: int = 1, seed: int = 0
) -> Calibration:
    """`count` batches of `batch` windows of `window` consecutive tokens from the 1-D stream
    `tokens`, at random starts (seeded), as `{"input_ids": [batch, window]}` batches."""
    if tokens.dim() != 1:
        raise CalibrationError(
            f"token_windows needs a 1-D token stream, got shape {tuple(tokens.shape)}; "
            "pass ids.reshape(-1) to use every row as one stream"
        )
    if window < 1 or count < 1 or batch < 1:
        raise CalibrationError(
            f"token_windows needs window, count and batch of at least 1, got {window}, "
            f"{count}, {batch}"
        )
    if len(tokens) < window:
        raise CalibrationError(
            f"the calibration stream has {len(tokens)} tokens, fewer than one window of "
            f"{window}; fix: give at least {window} tokens (more text) or a window of at "
            f"most {len(tokens)}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - window + 1, (count, batch), generator=generator)
    return Calibration(
        [
            {"input_ids": torch.stack([tokens[s : s + window] for s in row.tolist()])}
            for row in starts
        ]
    )
