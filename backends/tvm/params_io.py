"""Weights of a TVM build in `tvm_params.safetensors` beside the library, and call specs as text.

Rules:
- parameters are stored as `param_0`, `param_1`, ... in `main`'s parameter order, so the
  library holds code only and a 30 MB model does not become a 30 MB .so;
- safetensors never unpickles; a missing or misshapen parameter is an ArtifactError.

Example:
    save_params(directory, params)
    params = load_params(directory, count=len(params))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from sparsec.errors import ArtifactError

__all__ = ["LIBRARY_FILE", "PARAMS_FILE", "load_params", "save_params"]

LIBRARY_FILE = "tvm_model.so"
PARAMS_FILE = "tvm_params.safetensors"


def save_params(directory: Path, params: Sequence[np.ndarray]) -> None:
    """Write `params` to PARAMS_FILE in `directory`."""
    save_file(
        {f"param_{index}": np.ascontiguousarray(value) for index, value in enumerate(params)},
        str(directory / PARAMS_FILE),
    )


def load_params(directory: Path, count: int) -> list[np.ndarray]:
    """The `count` parameters saved by `save_params`, in order."""
    path = directory / PARAMS_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read the TVM parameters {path}: {exc}") from exc
    missing = [f"param_{i}" for i in range(count) if f"param_{i}" not in tensors]
    if missing or len(tensors) != count:
        raise ArtifactError(
            f"{path} holds {len(tensors)} parameters, the library takes {count} (missing "
            f"{missing[:3]}). Fix: re-export the artifact."
        )
    return [tensors[f"param_{i}"] for i in range(count)]
