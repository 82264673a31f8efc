"""The sparse ops' ONNX translations, for `torch.onnx.export(custom_translation_table=...)`.

Rules:
- each format owns its translation (`SparseFormat.onnx_translation` in `sparse_formats.py`,
  which says how the op becomes ONNX nodes); this table only collects them from `FORMATS`,
  so a new format needs no edit here;
- importing this module does not load onnxscript: a translation imports it when the
  exporter traces it.

Example:
    torch.onnx.export(program, (), dynamo=True, custom_translation_table=ONNX_TRANSLATIONS)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparsec.ops.sparse_formats import FORMATS

__all__ = ["ONNX_TRANSLATIONS"]

ONNX_TRANSLATIONS: dict[Any, Callable[..., Any]] = {
    fmt.op: fmt.onnx_translation for fmt in FORMATS.values()
}
"""OpOverload → translation, for `torch.onnx.export(..., custom_translation_table=...)`."""
