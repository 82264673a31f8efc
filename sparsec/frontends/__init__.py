"""Front ends: turn a user's model into a sparsec Graph."""

from sparsec.frontends.torch_frontend import normalize_inputs, trace
from sparsec.frontends.trace_settings import trace_settings

__all__ = ["normalize_inputs", "trace", "trace_settings"]
