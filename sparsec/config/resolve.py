"""Turn whatever the user passed as `pipeline=` into one Pipeline.

Rules:
- None → the default preset (`structured-50`); a Pipeline or a sequence of passes → as is;
- a string naming a preset → that preset; a path ending in .toml/.yaml/.yml → that file;
  text such as `magnitude-importance{norm=1},prune-channels{ratio=0.3}` → parsed;
- anything else raises ConfigError listing the presets and the accepted forms;
- explicit `target`/`backend` arguments override what the pipeline says; overriding the
  backend of a pipeline that carries options for it is an error (they would be dropped);
- `backend_options` (plain data, e.g. from `--backend-option key=value`) are merged over the
  pipeline's own, key by key, and the result is validated as the file's table is.

Example:
    resolve_pipeline("structured-30", target="cuda")
    resolve_pipeline("tvm.toml", backend_options={"tune_trials": 64})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparsec.backends.base import TARGETS, available_backends
from sparsec.config._suggest import did_you_mean, unknown_choice
from sparsec.config.files import (
    SUFFIXES,
    backend_options_from_dict,
    backend_options_type,
    load_pipeline,
    parse_pipeline_text,
    registered_passes,
)
from sparsec.config.presets import DEFAULT_PRESET, get_preset, list_presets
from sparsec.errors import ConfigError
from sparsec.pipeline import Pass, Pipeline, options_dict

__all__ = ["PipelineSpec", "resolve_pipeline"]

PipelineSpec = str | Path | Pipeline | Sequence[Pass] | None
"""Every form `resolve_pipeline` accepts."""

_FORMS = (
    "a preset name, a .toml/.yaml/.yml file, or pipeline text such as "
    "'magnitude-importance{norm=2},prune-channels{ratio=0.5}'"
)


def resolve_pipeline(
    pipeline: PipelineSpec = None,
    *,
    target: str | None = None,
    backend: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    options_source: str = "backend_options",
) -> Pipeline:
    """The Pipeline that `pipeline` names, with `target`/`backend`/`backend_options` overriding.

    `options_source` names where `backend_options` came from in errors (`--backend-option`).
    """
    resolved = _resolve(pipeline)
    if target is not None and (problem := unknown_choice("target", target, TARGETS)):
        raise ConfigError(problem)
    if backend is not None and (problem := unknown_choice("backend", backend, available_backends())):
        raise ConfigError(problem)
    if target is None and backend is None and not backend_options:
        _check_options_type(resolved)
        return resolved
    chosen = backend or resolved.backend
    options = resolved.backend_options
    if options is not None and chosen != resolved.backend:
        raise ConfigError(
            f"backend {chosen!r} overrides the pipeline's backend {resolved.backend!r}, whose "
            f"backend_options ({type(options).__name__}) do not apply to it. Fix: drop the "
            "override, or the pipeline's backend_options"
        )
    if backend_options:
        if not isinstance(backend_options, Mapping):
            raise ConfigError(
                f"{options_source} must be a mapping of option names to values, e.g. "
                f"{{'tune_trials': 64}}, not {type(backend_options).__name__}"
            )
        merged = {**(options_dict(options) or {}), **backend_options}
        options = backend_options_from_dict(chosen, merged, options_source)
    return _check_options_type(
        Pipeline(
            resolved.passes,
            target=target or resolved.target,
            backend=chosen,
            backend_options=options,
        )
    )


def _check_options_type(pipeline: Pipeline) -> Pipeline:
    """A Pipeline built in Python may pair a backend with another backend's options."""
    options = pipeline.backend_options
    if options is None or pipeline.backend is None:
        return pipeline
    expected = backend_options_type(pipeline.backend)
    if expected is None or not isinstance(options, expected):
        takes = "takes no options" if expected is None else f"takes {expected.__name__}"
        raise ConfigError(
            f"the pipeline's backend_options are {type(options).__name__}, but backend "
            f"{pipeline.backend!r} {takes}. Fix: pass the options of the backend it names"
        )
    return pipeline


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
