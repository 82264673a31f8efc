"""The pruned graph as the user's own module tree: trainable, savable, exportable."""

from sparsec.materialize._families import block_widths
from sparsec.materialize.registry import GraphFacts, register_updater
from sparsec.materialize.tree import Materialized, Record, apply_record, materialize

__all__ = [
    "GraphFacts",
    "Materialized",
    "Record",
    "apply_record",
    "block_widths",
    "materialize",
    "register_updater",
]
