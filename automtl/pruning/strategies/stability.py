"""``stability``: structured removal of units whose removal barely moves the outputs under input noise."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from automtl.models import in_mode, task_outputs
from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.scoring import lowest_fraction, normalise

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext
    from automtl.pruning.groups import UnitGroup

NOISE = 0.1  # perturbation std, as a fraction of the calibration inputs' std
SAMPLES = 256


@torch.no_grad()
def _unit_effects(model: nn.Module, ctx: PruneContext, group: UnitGroup, inputs: torch.Tensor, base: dict
                  ) -> list[torch.Tensor]:
    """Per task: mean squared output change when each alive unit of ``group`` is silenced.

    Silencing zeroes the unit at every producing member (layer and BatchNorm outputs) and in the
    input of every layer that reads it, so a residual stream's channel is silenced everywhere at
    once and readers hear nothing of it, as after removal.
    """
    effects = {name: torch.zeros(group.units) for name in ctx.problem.task_names}
    silenced = {"unit": 0}

    def zeroed(member, tensor):
        channels = member.index[member.unit == silenced["unit"]].to(tensor.device)
        return tensor.index_fill(member.channel_dim % tensor.dim(), channels, 0.0)

    handles = [m.module.register_forward_hook(lambda _mod, _in, out, m=m: zeroed(m, out)) for m in group.producers]
    handles += [m.module.register_forward_pre_hook(lambda _mod, args, m=m: (zeroed(m, args[0]), *args[1:]))
                for m in group.readers]
    try:
        for unit in torch.nonzero(group.alive()).flatten().tolist():
            silenced["unit"] = unit
            out = task_outputs(model(inputs), ctx.problem.task_names)
            for name in effects:
                effects[name][unit] = (out[name] - base[name]).pow(2).mean().cpu()
    finally:
        for handle in handles:
            handle.remove()
    return [normalise(e) for e in effects.values()]


@register
class Stability(Strategy):
    """Silence each unit on noise-perturbed inputs; remove the fraction tau_s whose silencing changes the task outputs least."""

    name = "stability"
    structured = True
    threshold = ThresholdSpec("tau_s", "fraction of each group's alive units removed (least output change first)", 0.0, 1.0,
                              calibrated=True)

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        inputs = ctx.calibration.inputs[:SAMPLES]
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(ctx.seed)).to(inputs.device)
        perturbed = inputs + NOISE * inputs.std() * noise
        removed = 0
        with in_mode(model, False):
            for group in ctx.groups:
                with torch.no_grad():
                    base = task_outputs(model(perturbed), ctx.problem.task_names)
                scores = ctx.combine(_unit_effects(model, ctx, group, perturbed, base))
                removed += group.remove(lowest_fraction(scores, group.alive(), value), self.name)
        return removed
