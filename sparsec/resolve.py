"""Turn whatever the user passed as `pipeline=` into one Pipeline.

Rules:
- None → the default preset (`structured-50`); a Pipeline or a sequence of passes → as is;
- a string naming a preset → that preset; a path ending in .toml/.yaml/.yml → that file;
  text such as `magnitude-importance{norm=1},prune-channels{ratio=0.3}` → parsed;
- anything else raises ConfigError listing the presets and the accepted forms;
- explicit `target`/`backend` arguments override what the pipeline says.

Example:
    resolve_pipeline("structured-30", target="cuda")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sparsec._suggest import did_you_mean, unknown_choice
from sparsec.config import (
    BACKENDS,
    SUFFIXES,
    TARGETS,
    load_pipeline,
    parse_pipeline_text,
    registered_passes,
)
from sparsec.errors import ConfigError
from sparsec.pipeline import Pass, Pipeline
from sparsec.presets import DEFAULT_PRESET, get_preset, list_presets

__all__ = ["PipelineSpec", "resolve_pipeline"]

PipelineSpec = str | Path | Pipeline | Sequence[Pass] | None
"""Every form `resolve_pipeline` accepts."""

_FORMS = (
    "a preset name, a .toml/.yaml/.yml file, or pipeline text such as "
    "'magnitude-importance{norm=2},prune-channels{ratio=0.5}'"
)


def resolve_pipeline(
    pipeline: PipelineSpec = None, *, target: str | None = None, backend: str | None = None
) -> Pipeline:
    """The Pipeline that `pipeline` names, with `target`/`backend` overriding when given."""
    resolved = _resolve(pipeline)
    if target is not None and (problem := unknown_choice("target", target, TARGETS)):
        raise ConfigError(problem)
    if backend is not None and (problem := unknown_choice("backend", backend, BACKENDS)):
        raise ConfigError(problem)
    if target is None and backend is None:
        return resolved
    return Pipeline(
        resolved.passes, target=target or resolved.target, backend=backend or resolved.backend
    )


def _resolve(pipeline: PipelineSpec) -> Pipeline:
    if pipeline is None:
        return get_preset(DEFAULT_PRESET)
    if isinstance(pipeline, Pipeline):
        return pipeline
    if isinstance(pipeline, Path):
        return load_pipeline(pipeline)
    if isinstance(pipeline, str):
        return _from_string(pipeline)
    if isinstance(pipeline, Sequence):
        passes: list[Pass] = []
        for index, item in enumerate(pipeline):
            if not isinstance(item, Pass):
                raise ConfigError(
                    f"pipeline[{index}] is {type(item).__name__}, not a pass; expected pass objects"
                )
            passes.append(item)
        return Pipeline(passes)
    raise ConfigError(
        f"pipeline must be {_FORMS}, a Pipeline or a list of passes; got {type(pipeline).__name__}"
    )


def _from_string(text: str) -> Pipeline:
    presets = list_presets()
    if text in presets:
        return get_preset(text)
    if text.lower().endswith(SUFFIXES):
        return load_pipeline(text)
    if (
        "{" in text
        or "," in text
        or text.strip().startswith("pipeline(")
        or text in registered_passes()
    ):
        return parse_pipeline_text(text)
    raise ConfigError(
        f"{text!r} is not a preset ({did_you_mean(text, presets)}), a pipeline file "
        "(.toml/.yaml/.yml) or pipeline text ('magnitude-importance{norm=2},prune-channels{ratio=0.5}')"
    )
