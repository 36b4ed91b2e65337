"""``random``: unstructured removal of a random fraction of weights (the baseline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.scoring import lowest_fraction
from automtl.pruning.layers import present, remove_weights

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


@register
class Random(Strategy):
    """Remove a random fraction tau_r of each layer's remaining weights (seeded)."""

    name = "random"
    structured = False
    threshold = ThresholdSpec("tau_r", "fraction of each layer's remaining weights removed at random", 0.0, 1.0,
                              calibrated=True)

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        generator = torch.Generator().manual_seed(ctx.seed)
        removed = 0
        for layer in ctx.weight_layers:
            scores = torch.rand(layer.module.weight.shape, generator=generator).to(layer.module.weight.device)
            removed += remove_weights(layer, lowest_fraction(scores, present(layer.module), value), self.name)
        return removed
