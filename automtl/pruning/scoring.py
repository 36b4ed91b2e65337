"""Scoring helpers the strategies share: combine per-task scores, scale them to [0, 1], pick the lowest share
of candidates."""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

Aggregate = Literal["max", "mean", "min"]
# How one layer's per-task scores combine into one (a stacked tensor, tasks first).
AGGREGATES: dict[str, Callable[[Tensor], Tensor]] = {
    "max": lambda s: s.max(dim=0).values,  # keep what any task needs
    "mean": lambda s: s.mean(dim=0),
    "min": lambda s: s.min(dim=0).values,
}


def normalise(scores: Tensor) -> Tensor:
    """Scale non-negative scores to [0, 1] by their maximum (all-zero stays zero)."""
    top = scores.max()
    return scores / top if top > 0 else scores


def lowest_fraction(scores: Tensor, candidates: Tensor, fraction: float) -> Tensor:
    """Bool mask of the ``floor(fraction * #candidates)`` lowest-scoring candidates.

    Ties break by position, so a larger fraction always removes a superset.
    """
    flat_scores, flat_candidates = scores.flatten(), candidates.flatten()
    count = math.floor(fraction * int(flat_candidates.sum()))
    remove = torch.zeros_like(flat_candidates)
    if count > 0:
        ranked = torch.where(flat_candidates, flat_scores, torch.inf)
        order = torch.sort(ranked, stable=True).indices[:count]
        remove[order] = True
    return remove.view_as(candidates)
