"""Front ends: turn a user's model into a sparsec Graph."""

from sparsec.frontends.torch_frontend import program_graph, trace
from sparsec.frontends.trace_settings import trace_settings

__all__ = ["program_graph", "trace", "trace_settings"]
