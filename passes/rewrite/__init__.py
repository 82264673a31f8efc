"""Rewrites: they edit a graph through the Rewriter and report what changed."""

from sparsec.passes.rewrite.prune_channels import PruneChannels

__all__ = ["PruneChannels"]
