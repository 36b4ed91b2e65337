"""``entropy``: structured removal of units whose activations carry little information."""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
from torch import Tensor, nn

from automtl.pruning.probe import best_site, unit_activations
from automtl.pruning.registry import Strategy, ThresholdSpec, register

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext

BINS = 16


def normalised_entropy(acts: Tensor, bins: int = BINS) -> Tensor:
    """Per column of ``(N, units)``: entropy of its histogram over the value range of all columns, / log(bins)."""
    low, high = acts.min(), acts.max()
    if high <= low:
        return torch.zeros(acts.shape[1], device=acts.device)
    index = ((acts - low) / (high - low) * bins).long().clamp_(max=bins - 1)
    counts = torch.zeros(acts.shape[1], bins, device=acts.device).scatter_add_(1, index.T, torch.ones_like(index.T, dtype=torch.float32))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(bins)


@register
class Entropy(Strategy):
    """Remove units whose activation entropy (16 bins over the range where they are read, / log 16) is below tau_e."""

    name = "entropy"
    structured = True
    threshold = ThresholdSpec(
        "tau_e", "activation entropy normalised to [0, 1] (0 = constant unit, 1 = uniform over 16 bins)", 0.0, 1.0
    )

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        acts = unit_activations(model, ctx.groups, ctx.calibration.inputs)
        return sum(
            group.remove(best_site(acts[group.name], normalised_entropy) < value, self.name) for group in ctx.groups
        )
