"""sparsec: a compiler for sparse neural networks.

    compiled = sparsec.compile(model, (x,), target="cpu", pipeline="structured-50")
    compiled.save("out/model")
    model = sparsec.load("out/model")
    sparsec.recover(compiled, teacher=dense_model, data=batches)  # distil, then save again
    sparsec.search(model, (x,), calibration=batches, budget=0.01)  # fastest within 1%
    sparsec.sparsify_checkpoint("llama-7b", "llama-7b-wanda", calibration)  # block by block

The names below are imported on first use (PEP 562): `import sparsec` and `sparsec --help`
do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparsec.artifact import LoadedArtifact
    from sparsec.artifact import read_artifact as load
    from sparsec.budget_search import search
    from sparsec.driver import CompiledModel, compile
    from sparsec.pipeline import Pipeline
    from sparsec.recovery import Recovery, recover
    from sparsec.streaming import sparsify_checkpoint

__version__ = "0.1.0"

# public name -> (module, attribute)
_EXPORTS = {
    "CompiledModel": ("sparsec.driver", "CompiledModel"),
    "LoadedArtifact": ("sparsec.artifact", "LoadedArtifact"),
    "Pipeline": ("sparsec.pipeline", "Pipeline"),
    "Recovery": ("sparsec.recovery", "Recovery"),
    "compile": ("sparsec.driver", "compile"),
    "load": ("sparsec.artifact", "read_artifact"),
    "recover": ("sparsec.recovery", "recover"),
    "search": ("sparsec.budget_search", "search"),
    "sparsify_checkpoint": ("sparsec.streaming", "sparsify_checkpoint"),
}

__all__ = [
    "CompiledModel",
    "LoadedArtifact",
    "Pipeline",
    "Recovery",
    "__version__",
    "compile",
    "load",
    "recover",
    "search",
    "sparsify_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sparsec' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
