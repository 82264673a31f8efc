"""Rewrites: they edit a graph through the Rewriter and report what changed."""

from sparsec.passes.rewrite.canonicalize_linear import (
    CanonicalizeLinear,
    CanonicalizeLinearSummary,
)
from sparsec.passes.rewrite.lower_sparse_weights import (
    LowerSparseWeights,
    LowerSparseWeightsSummary,
)
from sparsec.passes.rewrite.prune_blocks import PruneBlocks, PruneBlocksSummary
from sparsec.passes.rewrite.prune_channels import PruneChannels, PruneChannelsSummary
from sparsec.passes.rewrite.prune_experts import PruneExperts, PruneExpertsSummary
from sparsec.passes.rewrite.recalibrate_bn import RecalibrateBN, RecalibrateBNSummary
from sparsec.passes.rewrite.sparsify import Sparsify, SparsifySummary

__all__ = [
    "CanonicalizeLinear",
    "CanonicalizeLinearSummary",
    "LowerSparseWeights",
    "LowerSparseWeightsSummary",
    "PruneBlocks",
    "PruneBlocksSummary",
    "PruneChannels",
    "PruneChannelsSummary",
    "PruneExperts",
    "PruneExpertsSummary",
    "RecalibrateBN",
    "RecalibrateBNSummary",
    "Sparsify",
    "SparsifySummary",
]
