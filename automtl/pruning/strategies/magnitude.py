"""``magnitude``: unstructured removal of small weights, normalised per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.scoring import normalise
from automtl.pruning.layers import effective, remove_weights

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


@register
class Magnitude(Strategy):
    """Remove weights whose |w|, divided by the largest |w| of their layer, is below tau_w."""

    name = "magnitude"
    structured = False
    threshold = ThresholdSpec("tau_w", "normalised |w| = |w| / max|w| of the layer; weights below it go", 0.0, 1.0)

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        return sum(
            remove_weights(layer, normalise(effective(layer.module).abs()) < value, self.name)
            for layer in ctx.weight_layers
        )
