"""``activation``: structured removal of units that barely fire on calibration data."""

from __future__ import annotations

from torch import nn

from automtl.pruning.activations import unit_activations
from automtl.pruning.base import PruneContext, Strategy, ThresholdSpec, normalise, register
from automtl.pruning.layers import remove_units


@register
class Activation(Strategy):
    """Remove neurons/channels whose mean |activation|, divided by the layer's largest, is below tau_a."""

    name = "activation"
    structured = True
    threshold = ThresholdSpec(
        "tau_a", "normalised mean |activation| over calibration data (1 = the layer's most active unit)", 0.0, 1.0
    )

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        acts = unit_activations(model, ctx.hidden_layers, ctx.calibration.inputs)
        return sum(
            remove_units(layer, normalise(acts[layer.name].abs().mean(0)) < value, self.name)
            for layer in ctx.hidden_layers
        )
