"""Shared by every importance criterion: per-tensor values onto units, aggregation, normalisation.

Rules:
- a criterion produces one array per coupled tensor (a `ParamSlice` or an activation slot),
  indexed like that tensor's axis; `to_units` sums it onto the group's units;
- a unit that several tensors touch gets their values combined by `Aggregate`; a tensor
  that does not touch a unit (one branch of a `cat`) neither counts nor multiplies;
- `Normalize` rescales a group's scores so groups can be ranked against each other:
  "mean" / "max" / "sum" divide by that statistic of the group, "standardize" subtracts the
  mean and divides by the standard deviation; "none" keeps raw values.

Example:
    parts = [to_units(deps, group, p.slot, values) for p, values in tensors]
    scores = normalize(aggregate(parts, "mean"), "max")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sparsec.ir.opinfo import Slot
from sparsec.passes.analysis.dependency_groups import DependencyGroup, DependencyInfo

__all__ = ["Aggregate", "Normalize", "Scope", "UnitValues", "aggregate", "normalize", "to_units"]

Aggregate = Literal["sum", "mean", "max", "product"]
"""How to combine the values of one unit from several coupled tensors."""

Normalize = Literal["none", "mean", "max", "sum", "standardize"]
"""How to rescale a group's scores (see the module docstring)."""

Scope = Literal["producers", "coupled"]
"""Which tensors a weight criterion reads: producers only, or every coupled parameter
(producers, norms and the consumers' input slices)."""

_EPS = 1e-12


@dataclass(frozen=True)
class UnitValues:
    """One tensor's values summed per unit, with a mask of the units it touches."""

    values: np.ndarray
    touched: np.ndarray


def to_units(
    deps: DependencyInfo, group: DependencyGroup, slot: Slot, values: np.ndarray
) -> UnitValues:
    """Sum per-index `values` of `slot` onto the units of `group`."""
    positions = np.searchsorted(group.units, deps.slot_units[slot])
    n = len(group.units)
    summed = np.bincount(positions, weights=np.asarray(values, dtype=np.float64), minlength=n)
    touched = np.bincount(positions, minlength=n) > 0
    return UnitValues(summed, touched)


def aggregate(parts: Sequence[UnitValues], how: Aggregate, size: int) -> np.ndarray:
    """Combine the tensors' per-unit values; units no tensor touches score 0."""
    if not parts:
        return np.zeros(size)
    values = np.stack([p.values for p in parts])
    touched = np.stack([p.touched for p in parts])
    count = touched.sum(0)
    if how == "sum":
        out = np.where(touched, values, 0.0).sum(0)
    elif how == "mean":
        out = np.where(touched, values, 0.0).sum(0) / np.maximum(count, 1)
    elif how == "max":
        out = np.where(touched, values, -np.inf).max(0)
    else:
        out = np.where(touched, values, 1.0).prod(0)
    return np.where(count > 0, out, 0.0)


def normalize(scores: np.ndarray, how: Normalize) -> np.ndarray:
    """Rescale one group's scores (see `Normalize`)."""
    if how == "none" or len(scores) == 0:
        return scores
    if how == "standardize":
        return (scores - scores.mean()) / (scores.std() + _EPS)
    magnitude = np.abs(scores)
    statistic = (
        magnitude.mean() if how == "mean" else magnitude.max() if how == "max" else magnitude.sum()
    )
    return scores / (statistic + _EPS)
