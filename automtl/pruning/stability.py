"""``stability``: structured removal of units whose removal barely moves the outputs under input noise."""

from __future__ import annotations

import torch
from torch import nn

from automtl.models import task_outputs
from automtl.pruning.base import PruneContext, Strategy, ThresholdSpec, lowest_fraction, normalise, register
from automtl.pruning.layers import Layer, alive_units, remove_units

NOISE = 0.1  # perturbation std, as a fraction of the calibration inputs' std
SAMPLES = 256


@torch.no_grad()
def _unit_effects(model: nn.Module, ctx: PruneContext, layer: Layer, inputs: torch.Tensor, base: dict) -> list[torch.Tensor]:
    """Per task: mean squared output change when each unit of ``layer`` is silenced."""
    units, alive = layer.units, alive_units(layer)
    effects = {name: torch.zeros(units, device=inputs.device) for name in ctx.problem.task_names}
    silenced = {"unit": 0}

    def silence(_module, _inputs, output):
        output = output.clone()
        output[:, silenced["unit"]] = 0
        return output

    handle = layer.module.register_forward_hook(silence)
    try:
        for unit in torch.nonzero(alive).flatten().tolist():
            silenced["unit"] = unit
            out = task_outputs(model(inputs), ctx.problem.task_names)
            for name in effects:
                effects[name][unit] = (out[name] - base[name]).pow(2).mean()
    finally:
        handle.remove()
    return [normalise(e) for e in effects.values()]


@register
class Stability(Strategy):
    """Silence each unit on noise-perturbed inputs; remove the fraction tau_s whose silencing changes the task outputs least."""

    name = "stability"
    structured = True
    threshold = ThresholdSpec("tau_s", "fraction of each layer's alive units removed (least output change first)", 0.0, 1.0)

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        inputs = ctx.calibration.inputs[:SAMPLES]
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(ctx.seed)).to(inputs.device)
        perturbed = inputs + NOISE * inputs.std() * noise
        was_training = model.training
        model.eval()
        try:
            removed = 0
            for layer in ctx.hidden_layers:
                with torch.no_grad():
                    base = task_outputs(model(perturbed), ctx.problem.task_names)
                scores = ctx.combine(_unit_effects(model, ctx, layer, perturbed, base))
                removed += remove_units(layer, lowest_fraction(scores, alive_units(layer), value), self.name)
        finally:
            model.train(was_training)
        return removed
