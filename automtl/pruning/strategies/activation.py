"""``activation``: structured removal of units that barely fire on calibration data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from automtl.pruning.probe import best_site, unit_activations
from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.scoring import normalise

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


@register
class Activation(Strategy):
    """Remove units (channel groups) whose mean |activation|, divided by the group's largest, is below tau_a."""

    name = "activation"
    structured = True
    threshold = ThresholdSpec(
        "tau_a", "normalised mean |activation| over calibration data (1 = the group's most active unit)", 0.0, 1.0
    )

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        acts = unit_activations(model, ctx.groups, ctx.calibration.inputs, magnitude=True)
        return sum(
            group.remove(best_site(acts[group.name], lambda site: normalise(site.mean(0))) < value, self.name)
            for group in ctx.groups
        )
