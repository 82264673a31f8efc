"""Configuration: pipelines from presets, files (TOML, YAML), text and Python, validated.

Modules:
- `files`: pipeline files and dicts, validated into frozen pass objects, and written back;
- `presets`: the built-in named pipelines (`structured-50`, `block-90`, ...);
- `resolve`: the one entry point compile() and the CLI use: any accepted form -> Pipeline;
- `_pipeline_text`, `_option_types`, `_locate`, `_suggest`: parsing, option coercion, error
  positions and "did you mean" suggestions, private to this package.

Example:
    pipeline = resolve_pipeline("structured-50", target="cpu")
    dump_pipeline(pipeline, "pipeline.toml")
    assert load_pipeline("pipeline.toml") == pipeline
"""

from sparsec.config._suggest import did_you_mean
from sparsec.config.files import (
    SUFFIXES,
    backend_options_from_dict,
    backend_options_type,
    dump_pipeline,
    load_pipeline,
    parse_pipeline_text,
    pipeline_from_dict,
    registered_passes,
)
from sparsec.config.presets import DEFAULT_PRESET, get_preset, list_presets
from sparsec.config.resolve import PipelineSpec, resolve_pipeline

__all__ = [
    "DEFAULT_PRESET",
    "SUFFIXES",
    "PipelineSpec",
    "backend_options_from_dict",
    "backend_options_type",
    "did_you_mean",
    "dump_pipeline",
    "get_preset",
    "list_presets",
    "load_pipeline",
    "parse_pipeline_text",
    "pipeline_from_dict",
    "registered_passes",
    "resolve_pipeline",
]
