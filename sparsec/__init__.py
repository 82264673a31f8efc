"""sparsec: a compiler for sparse neural networks.

    compiled = sparsec.compile(model, (x,), target="cpu", pipeline="structured-50")
    compiled.save("out/model")
    model = sparsec.load("out/model")
    sparsec.recover(compiled, teacher=dense_model, data=batches)  # distil, then save again
    sparsec.search(model, (x,), calibration=batches, budget=0.01)  # fastest within 1%
"""

from sparsec.artifact import LoadedArtifact
from sparsec.artifact import read_artifact as load
from sparsec.budget_search import search
from sparsec.compile import CompiledModel, compile
from sparsec.pipeline import Pipeline
from sparsec.recover import Recovery, recover

__version__ = "0.1.0"

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
]
