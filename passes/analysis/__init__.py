"""Analyses: they compute results from a graph and never change it."""

from sparsec.passes.analysis.dependency_groups import (
    DependencyGroup,
    DependencyGroups,
    DependencyInfo,
    ParamSlice,
)
from sparsec.passes.analysis.magnitude_importance import MagnitudeImportance

__all__ = ["DependencyGroup", "DependencyGroups", "DependencyInfo", "MagnitudeImportance", "ParamSlice"]
