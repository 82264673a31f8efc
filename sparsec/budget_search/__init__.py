"""Quality-budget search: the fastest deployable variant of a model within a quality budget.

    result = sparsec.search(model, x, calibration=batches, budget=0.01, results="s.json")
    print(result.message); fast = sparsec.load(result.chosen.artifact)

Modules: `space` (candidates), `quality` (metrics), `timing` (latency in a fresh process),
`run` (the search, its results file and the Pareto front), `plot` (the front as a PNG).
"""

from sparsec.budget_search.quality import Metric, fidelity, relative_drop
from sparsec.budget_search.run import Measured, SearchResult, pareto_front, search
from sparsec.budget_search.space import Candidate, default_space

__all__ = [
    "Candidate",
    "Measured",
    "Metric",
    "SearchResult",
    "default_space",
    "fidelity",
    "pareto_front",
    "relative_drop",
    "search",
]
