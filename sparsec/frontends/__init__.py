"""Front ends: turn a user's model into a sparsec Graph."""

from sparsec.frontends.torch_frontend import normalize_inputs, trace

__all__ = ["normalize_inputs", "trace"]
