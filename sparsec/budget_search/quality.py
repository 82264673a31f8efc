"""Quality of a candidate: the user's metric, or fidelity to the dense model's outputs.

Rules:
- a metric maps a callable model (called like the original) and the held-out batches to one
  float, higher is better; `relative_drop(dense, value)` is (dense - value) / |dense|, what
  a budget bounds;
- the default, `fidelity`, compares each candidate with the dense model on the held-out
  batches, by the kind of output (its first floating-point leaf, `.logits` first):
  - [batch, seq, vocab] logits with `input_ids` among the inputs (a causal LM): perplexity
    ratio on next-token prediction of those ids, reported as ppl(dense) / ppl(candidate);
  - [batch, classes] logits: top-1 agreement with the dense model;
  - anything else (embeddings, hidden states, images): mean cosine similarity per row;
- a metric that raises or returns NaN makes that candidate fail with the reason; the search
  goes on and records it.

Example:
    metric = fidelity(dense_model, batches)
    score = metric(candidate, batches)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

__all__ = ["Metric", "fidelity", "relative_drop"]

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
Metric = Callable[[Callable[..., Any], Sequence[Inputs]], float]


def relative_drop(dense: float, value: float) -> float:
    """How much of the dense quality a candidate loses, as a share of it."""
    return (dense - value) / abs(dense) if dense else dense - value


def _main_output(outputs: Any) -> torch.Tensor:
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    for leaf in pytree.tree_leaves(outputs):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    raise ValueError("the model returned no floating-point tensor to compare")


def _perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )
    return math.exp(float(loss))


def fidelity(dense: Callable[..., Any], batches: Sequence[Inputs]) -> Metric:
    """The default metric: closeness to `dense`'s outputs on `batches` (see module rules)."""
    with torch.no_grad():
        expected = [_main_output(dense(*args, **kwargs)) for args, kwargs in batches]

    def metric(model: Callable[..., Any], held: Sequence[Inputs]) -> float:
        scores = []
        with torch.no_grad():
            for (args, kwargs), reference in zip(held, expected, strict=True):
                got = torch.as_tensor(_main_output(model(*args, **kwargs))).float()
                ids = kwargs.get("input_ids")
                if got.dim() == 3 and isinstance(ids, torch.Tensor) and ids.dim() == 2:
                    scores.append(_perplexity(reference, ids) / _perplexity(got, ids))
                elif got.dim() == 2 and got.shape[-1] > 1:
                    scores.append(float((got.argmax(-1) == reference.argmax(-1)).float().mean()))
                else:
                    cosine = torch.nn.functional.cosine_similarity(
                        got.flatten(1), reference.float().flatten(1), dim=-1
                    )
                    scores.append(float(cosine.mean()))
        return sum(scores) / len(scores)

    return metric
