"""random-importance: seeded, reproducible, different per seed."""

from __future__ import annotations

import numpy as np
from models import make_residual

from sparsec.frontends import trace
from sparsec.passes.analysis import RandomImportance
from sparsec.pipeline import AnalysisManager


def test_reproducible_and_seeded() -> None:
    model, x = make_residual()
    a = AnalysisManager(trace(model, (x,))).get(RandomImportance(seed=1))
    b = AnalysisManager(trace(model, (x,))).get(RandomImportance(seed=1))
    c = AnalysisManager(trace(model, (x,))).get(RandomImportance(seed=2))
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
        assert ((a[k] >= 0) & (a[k] < 1)).all()
