"""sparsec's passes; importing this package registers them all by name."""

from sparsec.passes import analysis, rewrite

__all__ = ["analysis", "rewrite"]
