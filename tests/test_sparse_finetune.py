"""preserve_masks: training keeps pruned linear and conv weights at zero; no masks is an error."""

from __future__ import annotations

import pytest
import torch

from sparsec.errors import PreconditionError
from sparsec.frontends import trace
from sparsec.passes.rewrite import Sparsify
from sparsec.pipeline import PassManager
from sparsec.sparse_finetune import preserve_masks


def test_training_keeps_the_masks() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    graph = trace(model, (torch.randn(2, 8),))
    PassManager([Sparsify(pattern="nm", n=2, m=4)]).run(graph)
    module = graph.module
    zeros = {t: graph.tensor(t) == 0 for t in ("0.weight", "2.weight")}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
    with preserve_masks(module) as masks:
        for _ in range(5):
            loss = module(torch.randn(16, 8)).pow(2).mean()
            loss.backward()
            assert torch.all(module.get_parameter("0.weight").grad[zeros["0.weight"]] == 0)
            optimizer.step()
            optimizer.zero_grad()
            masks.reapply()
    for target, zero in zeros.items():
        weight = graph.tensor(target)
        assert torch.all(weight[zero] == 0)
        assert not torch.equal(weight[~zero], model.get_parameter(target)[~zero])  # it trained


def test_no_masks_is_an_error() -> None:
    graph = trace(torch.nn.Linear(4, 4), (torch.randn(2, 4),))
    with pytest.raises(PreconditionError, match="no sparsity masks"), preserve_masks(graph.module):
        pass


def test_training_keeps_conv_masks() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    )
    graph = trace(model, (torch.randn(2, 8, 5, 5),))
    PassManager([Sparsify(pattern="nm", n=2, m=4, layers=("conv",))]).run(graph)
    module = graph.module
    zeros = {t: graph.tensor(t) == 0 for t in ("0.weight", "2.weight")}
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
    with preserve_masks(module) as masks:
        for _ in range(3):
            module(torch.randn(4, 8, 5, 5)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            masks.reapply()
    for target, zero in zeros.items():
        weight = graph.tensor(target)
        assert torch.all(weight[zero] == 0)
        assert not torch.equal(weight[~zero], model.get_parameter(target)[~zero])
