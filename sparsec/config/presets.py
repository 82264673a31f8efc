"""Named pipelines for the common cases, so `compile(model)` needs no config file.

Rules:
- a preset is plain data (pass names and options) validated through `pipeline_from_dict`,
  so it resolves against the registry and never imports pass modules itself;
- `structured-50` is the default: the output layer is kept whole by the dependency analysis,
  not by the preset;
- `none` is the empty pipeline: compile without pruning;
- data-aware presets (`taylor-50`, `reconstruct-50`) say in their description what
  calibration they need; without it their passes raise PreconditionError naming the fix.

Example:
    get_preset("structured-50")  # pipeline(magnitude-importance{norm=2},prune-channels{ratio=0.5,...})
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from sparsec.config._suggest import did_you_mean
from sparsec.config.files import pipeline_from_dict
from sparsec.errors import ConfigError
from sparsec.pipeline import Pipeline

__all__ = ["DEFAULT_PRESET", "get_preset", "list_presets"]


class _Preset(NamedTuple):
    description: str
    passes: tuple[Mapping[str, Any], ...]


def _structured(ratio: float) -> _Preset:
    return _Preset(
        f"remove {ratio:.0%} of the channels of each prunable group, by L2 weight magnitude",
        (
            MappingProxyType({"name": "magnitude-importance", "norm": 2}),
            MappingProxyType({"name": "prune-channels", "ratio": ratio}),
        ),
    )


def _macs(
    criterion: Mapping[str, Any], description: str, *extra: Mapping[str, Any], **prune: Any
) -> _Preset:
    return _Preset(
        description,
        (
            MappingProxyType(dict(criterion)),
            MappingProxyType({"name": "prune-channels", "ratio": 0.5, "target": "macs", **prune}),
            *extra,
        ),
    )


def _sparse(description: str, sparsify: Mapping[str, Any], lower: Mapping[str, Any]) -> _Preset:
    """Fine-grained sparsity: canonical weight layers, masks, then sparse ops where they pay."""
    return _Preset(
        description,
        (
            MappingProxyType({"name": "canonicalize-linear"}),
            MappingProxyType({"name": "sparsify", **sparsify}),
            MappingProxyType({"name": "lower-sparse-weights", **lower}),
        ),
    )


_PRESETS: Mapping[str, _Preset] = MappingProxyType(
    {
        "structured-50": _structured(0.5),
        "structured-30": _structured(0.3),
        "macs-50": _macs(
            {"name": "magnitude-importance", "norm": 2},
            "remove 50% of the MACs, the same fraction of every group, by L2 weight magnitude",
        ),
        "taylor-50": _macs(
            {"name": "taylor-importance"},
            "remove 50% of the MACs by first-order Taylor importance; needs "
            "calibration=Calibration(batches, loss_fn=...)",
        ),
        "reconstruct-50": _macs(
            {"name": "magnitude-importance", "norm": 2},
            "remove 50% of the MACs by L2 magnitude, refit the next layers by least squares and "
            "re-estimate BatchNorm statistics: for models that cannot be retrained; needs "
            "calibration=batches",
            MappingProxyType({"name": "recalibrate-bn"}),
            reconstruct=True,
        ),
        "unstructured-50": _sparse(
            "zero 50% of every linear layer's weights by magnitude; sparse ops only where the "
            "measured break-even gate says they are faster",
            {"pattern": "unstructured", "sparsity": 0.5},
            {},
        ),
        "nm-2-4": _sparse(
            "2:4 sparsity (two of every four weights along the input axis) by magnitude",
            {"pattern": "nm", "n": 2, "m": 4},
            {},
        ),
        "block-90": _sparse(
            "90% block sparsity with 16x1 blocks (the shape CPU kernels exploit) by magnitude",
            {"pattern": "block", "block": [16, 1], "sparsity": 0.9},
            {},
        ),
        "none": _Preset("no pruning: compile the model as it is", ()),
    }
)

DEFAULT_PRESET = "structured-50"
"""The preset used when no pipeline is given."""


def list_presets() -> dict[str, str]:
    """Every preset name with its one-line description, in a stable order."""
    return {name: preset.description for name, preset in _PRESETS.items()}


def get_preset(name: str, *, target: str = "cpu", backend: str | None = None) -> Pipeline:
    """The Pipeline of preset `name`; an unknown name raises ConfigError with the nearest one."""
    preset = _PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; {did_you_mean(name, _PRESETS)}")
    data = {"target": target, "backend": backend, "passes": [dict(p) for p in preset.passes]}
    return pipeline_from_dict(data, source=f"preset {name!r}")
