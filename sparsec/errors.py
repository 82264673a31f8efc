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
    "PassOptionError",
    "NumericMismatchError",
    "BackendError",
    "ArtifactError",
    "CheckpointError",
    "CalibrationError",
    "MaterializeError",
    "InputError",
    "RecoveryError",
    "SearchError",
    "OnnxImportError",
    "EngineError",
    "CandidateError",
]


class SparsecError(Exception):
    """Base class of every error sparsec raises on purpose."""


class TraceError(SparsecError):
    """The model could not be traced into a graph; `details` holds the tracer's full text."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class OnnxImportError(TraceError):
    """An ONNX model could not be read or imported; the message names the file or nodes."""


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


class PassOptionError(ConfigError, ValueError):
    """A pass was constructed with invalid options; `errors` are pydantic's, one per option.

    Also a ValueError, as pydantic's own error was, so existing handlers keep working.
    """

    def __init__(self, pass_name: str, errors: list[dict]) -> None:  # type: ignore[type-arg]
        self.pass_name, self.errors = pass_name, errors
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg'][:1].lower()}{e['msg'][1:]}"
            + (f", got {e['input']!r}" if e["type"] != "missing" else "")
            for e in errors
        )
        super().__init__(f"{pass_name}: {details}. `sparsec passes` lists every option")


class NumericMismatchError(SparsecError):
    """A pass that promised to keep outputs changed them beyond the tolerance."""


class BackendError(SparsecError):
    """A backend could not lower or run the graph."""


class ArtifactError(SparsecError):
    """An artifact directory is missing, incomplete, tampered with or incompatible."""


class CheckpointError(ArtifactError):
    """A Hugging Face checkpoint on disk is incomplete: a shard or a tensor is missing."""


class CalibrationError(SparsecError):
    """Calibration data cannot serve the request (too few tokens for the window, no batches)."""


class MaterializeError(SparsecError):
    """The pruned graph could not be put back into the user's own module tree."""


class InputError(SparsecError):
    """Inputs given at call time do not match what the model was compiled for."""


class RecoveryError(SparsecError):
    """Distillation could not go on (the loss diverged); the best weights were restored."""


class SearchError(SparsecError):
    """The quality-budget search cannot start or go on (bad inputs, dense metric failing)."""


class EngineError(SparsecError):
    """The parallel engine asked for cannot be used (Ray not installed, cannot start or join)."""


class CandidateError(EngineError):
    """Evaluating one candidate of a parallel map failed; `candidate` names it, `cause` why."""

    def __init__(self, candidate: str, cause: BaseException) -> None:
        self.candidate, self.cause = candidate, cause
        super().__init__(
            f"candidate {candidate} failed: {type(cause).__name__}: {cause}. Fix: the cause "
            "above is the evaluation's own; engine='sequential' runs it in this process to "
            "debug it."
        )
