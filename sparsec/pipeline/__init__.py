"""Pass infrastructure: pass classes, the analysis cache, the pass manager, instruments."""

from sparsec.pipeline.analysis_manager import AnalysisManager
from sparsec.pipeline.base import (
    PRESERVE_ALL,
    Analysis,
    Pass,
    PassResult,
    PassSummary,
    RewritePass,
    format_pass,
    pass_dataclass,
    register,
    registry,
)
from sparsec.pipeline.instruments import (
    Instrument,
    IRDump,
    NumericCheck,
    PassFilter,
    Statistics,
    Timing,
    VerifyEach,
    max_abs_diff,
)
from sparsec.pipeline.pass_manager import PassManager, Pipeline, PipelineRun, options_dict

__all__ = [
    "PRESERVE_ALL",
    "Analysis",
    "AnalysisManager",
    "IRDump",
    "Instrument",
    "NumericCheck",
    "Pass",
    "PassFilter",
    "PassManager",
    "PassResult",
    "PassSummary",
    "Pipeline",
    "PipelineRun",
    "RewritePass",
    "Statistics",
    "Timing",
    "VerifyEach",
    "format_pass",
    "max_abs_diff",
    "options_dict",
    "pass_dataclass",
    "register",
    "registry",
]
