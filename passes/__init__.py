"""sparsec's passes; importing this package registers them all by name.

Every pass class is importable from here: `from sparsec.passes import PruneChannels`.
"""

from sparsec.passes import analysis, rewrite
from sparsec.passes.analysis import (
    ActivationImportance,
    BlockInfluence,
    BNScaleImportance,
    DependencyGroups,
    FisherImportance,
    LAMPImportance,
    LayerInputStats,
    MagnitudeImportance,
    RandomImportance,
    Sensitivity,
    TaylorImportance,
    WandaImportance,
)
from sparsec.passes.rewrite import (
    CanonicalizeLinear,
    LowerSparseWeights,
    PruneBlocks,
    PruneChannels,
    RecalibrateBN,
    Sparsify,
)

__all__ = [
    "ActivationImportance",
    "BNScaleImportance",
    "BlockInfluence",
    "CanonicalizeLinear",
    "DependencyGroups",
    "FisherImportance",
    "LAMPImportance",
    "LayerInputStats",
    "LowerSparseWeights",
    "MagnitudeImportance",
    "PruneBlocks",
    "PruneChannels",
    "RandomImportance",
    "RecalibrateBN",
    "Sensitivity",
    "Sparsify",
    "TaylorImportance",
    "WandaImportance",
    "analysis",
    "rewrite",
]
