"""Named exceptions: each says what went wrong, where, and how to fix it."""

from __future__ import annotations

__all__ = [
    "SparsecError",
    "TraceError",
    "VerificationError",
    "RewriteError",
    "PassError",
    "PreconditionError",
    "ConfigError",
    "NumericMismatchError",
    "BackendError",
    "ArtifactError",
    "MaterializeError",
    "InputError",
]


class SparsecError(Exception):
    """Base class of every error sparsec raises on purpose."""


class TraceError(SparsecError):
    """The model could not be traced into a graph."""


class VerificationError(SparsecError):
    """The graph is malformed or a node's shapes no longer agree."""


class RewriteError(SparsecError):
    """An edit through the Rewriter was invalid."""


class PassError(SparsecError):
    """A pass failed; the message names the pass and the passes before it."""


class PreconditionError(PassError):
    """A pass refused to run because the graph does not meet what it needs."""


class ConfigError(SparsecError):
    """A pipeline configuration is invalid."""


class NumericMismatchError(SparsecError):
    """A pass that promised to keep outputs changed them beyond the tolerance."""


class BackendError(SparsecError):
    """A backend could not lower or run the graph."""


class ArtifactError(SparsecError):
    """An artifact directory is missing, incomplete, tampered with or incompatible."""


class MaterializeError(SparsecError):
    """The pruned graph could not be put back into the user's own module tree."""


class InputError(SparsecError):
    """Inputs given at call time do not match what the model was compiled for."""
