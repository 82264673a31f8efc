"""sparsec's IR: Graph (an ATen fx graph), Rewriter, and the op channel-flow rules."""

from sparsec.ir.graph import Graph, InputSpec, describe_node
from sparsec.ir.rewriter import Change, Rewriter

__all__ = ["Change", "Graph", "InputSpec", "Rewriter", "describe_node"]
