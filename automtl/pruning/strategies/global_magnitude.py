"""``global_magnitude``: unstructured removal of the smallest weights, ranked across all layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.scoring import lowest_fraction
from automtl.pruning.layers import effective, present, remove_weights

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


@register
class GlobalMagnitude(Strategy):
    """Remove the share tau_g of the remaining weights with the smallest |w|, ranked across all layers at once."""

    name = "global_magnitude"
    structured = False
    threshold = ThresholdSpec(
        "tau_g", "share of the remaining in-scope weights removed (smallest |w| over all layers first)", 0.0, 1.0,
        calibrated=True,
    )

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        layers = ctx.weight_layers
        scores = torch.cat([effective(layer.module).abs().flatten().cpu() for layer in layers])
        kept = torch.cat([present(layer.module).flatten().cpu() for layer in layers])
        remove = lowest_fraction(scores, kept, value)
        removed, start = 0, 0
        for layer in layers:
            shape = layer.module.weight.shape
            size = shape.numel()
            chunk = remove[start:start + size].view(shape).to(layer.module.weight.device)
            removed += remove_weights(layer, chunk, self.name)
            start += size
        return removed
