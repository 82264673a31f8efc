"""Rewrites: they edit a graph through the Rewriter and report what changed."""

from sparsec.passes.rewrite.canonicalize_linear import CanonicalizeLinear
from sparsec.passes.rewrite.lower_sparse_weights import LowerSparseWeights
from sparsec.passes.rewrite.prune_blocks import PruneBlocks
from sparsec.passes.rewrite.prune_channels import PruneChannels
from sparsec.passes.rewrite.recalibrate_bn import RecalibrateBN
from sparsec.passes.rewrite.sparsify import Sparsify

__all__ = ["CanonicalizeLinear", "LowerSparseWeights", "PruneBlocks", "PruneChannels", "RecalibrateBN", "Sparsify"]
