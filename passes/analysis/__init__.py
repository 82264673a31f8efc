"""Analyses: they compute results from a graph and never change it."""

from sparsec.passes.analysis.activation_importance import ActivationImportance
from sparsec.passes.analysis.block_influence import Block, BlockInfluence
from sparsec.passes.analysis.bn_scale_importance import BNScaleImportance
from sparsec.passes.analysis.dependency_groups import (
    DependencyGroup,
    DependencyGroups,
    DependencyInfo,
    ParamSlice,
    Routing,
)
from sparsec.passes.analysis.expert_usage import ExpertLayer, ExpertUsage
from sparsec.passes.analysis.fisher_importance import FisherImportance
from sparsec.passes.analysis.lamp_importance import LAMPImportance
from sparsec.passes.analysis.layer_input_stats import LayerInputStats
from sparsec.passes.analysis.magnitude_importance import MagnitudeImportance
from sparsec.passes.analysis.random_importance import RandomImportance
from sparsec.passes.analysis.sensitivity import Sensitivity, SensitivityResult
from sparsec.passes.analysis.taylor_importance import TaylorImportance
from sparsec.passes.analysis.wanda_importance import WandaImportance

__all__ = [
    "ActivationImportance",
    "BNScaleImportance",
    "Block",
    "BlockInfluence",
    "DependencyGroup",
    "DependencyGroups",
    "DependencyInfo",
    "ExpertLayer",
    "ExpertUsage",
    "FisherImportance",
    "LAMPImportance",
    "LayerInputStats",
    "MagnitudeImportance",
    "ParamSlice",
    "RandomImportance",
    "Routing",
    "Sensitivity",
    "SensitivityResult",
    "TaylorImportance",
    "WandaImportance",
]
