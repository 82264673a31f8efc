"""Trace failures are classified: each cause gets its own fix, torch's dump stays in details.

Rules checked: numpy or Python-scalar example inputs, a keyword forward() does not take,
float input where token ids are expected, data-dependent control flow, and a model that fixes
a dynamic size (with `dynamic=False` as the working fix).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import DataDependent
from torch import nn

import sparsec
from sparsec.errors import TraceError
from sparsec.parts import CompiledParts


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(input_ids).mean(1))


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(2, 2, 4)


def _trace_error(model: nn.Module, inputs: object, **kwargs: object) -> TraceError:
    """The TraceError of a compile that may not fall back to parts (a named ONNX backend)."""
    with pytest.raises(TraceError) as info:
        sparsec.compile(model.eval(), inputs, backend="onnxruntime", pipeline="none", **kwargs)
    return info.value


def test_numpy_and_scalar_inputs() -> None:
    assert "torch.from_numpy" in str(_trace_error(nn.Linear(4, 4), (np.zeros((2, 4), np.float32),)))
    assert "a Python float" in str(_trace_error(nn.Linear(4, 4), (3.0,)))


def test_a_keyword_forward_does_not_take() -> None:
    message = str(_trace_error(Embed(), {"input_idz": torch.zeros(2, 5, dtype=torch.long)}))
    assert "forward(input_ids)" in message and "input_idz" in message


def test_float_where_ids_are_expected() -> None:
    assert "ids.long()" in str(_trace_error(Embed(), {"input_ids": torch.rand(2, 5)}))


def test_data_dependent_control_flow() -> None:
    error = _trace_error(DataDependent(), (torch.randn(2, 4),))
    assert "torch.cond" in str(error) and "depends on tensor values" in str(error)
    assert len(str(error).splitlines()) <= 3 and error.details
    by_parts = sparsec.compile(DataDependent().eval(), (torch.randn(2, 4),), pipeline="none")
    assert (
        isinstance(by_parts, CompiledParts)
        and "depends on tensor values" in by_parts.report.to_markdown()
    )


def test_inputs_the_model_cannot_run_keep_the_trace_error() -> None:
    with pytest.raises(TraceError, match="ids.long"):
        sparsec.compile(Embed().eval(), {"input_ids": torch.rand(2, 5)}, pipeline="none")


def test_fixed_size_suggests_dynamic_false_which_works() -> None:
    x = torch.randn(4, 4)
    assert "dynamic=False" in str(_trace_error(FixedBatch(), (x,)))
    compiled = sparsec.compile(
        FixedBatch().eval(), (x,), backend="torch", pipeline="none", dynamic=False
    )
    assert compiled(x).shape == (2, 2, 4)


def test_a_model_that_fails_without_tracing_is_told_so() -> None:
    """torch.export's message would be about tracing; the model's own error is the cause."""

    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).last_hidden_state  # type: ignore[attr-defined,no-any-return]

    with pytest.raises(TraceError, match="fails on the example inputs without tracing too: AttributeError"):
        sparsec.compile(Broken(), (torch.randn(2, 4),), backend="torch")
