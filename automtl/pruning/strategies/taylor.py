"""``taylor``: unstructured removal by first-order Taylor importance |w * dL/dw|, per task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from automtl.models import in_mode, task_outputs
from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.scoring import lowest_fraction, normalise
from automtl.pruning.layers import effective, present, remove_weights, trainable

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


@register
class Taylor(Strategy):
    """Score weights by |w * dL_t/dw| for each task t (normalised per layer), aggregate over tasks, remove the lowest fraction."""

    name = "taylor"
    structured = False
    threshold = ThresholdSpec("tau_t", "fraction of each layer's remaining weights removed (lowest importance first)", 0.0,
                              1.0, calibrated=True)

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        layers = ctx.weight_layers
        per_task = {layer.name: [] for layer in layers}
        with in_mode(model, False):
            for task in ctx.problem.tasks:
                model.zero_grad(set_to_none=True)
                for inputs, targets in ctx.calibration.batches(ctx.batch_size):
                    out = task_outputs(model(inputs), ctx.problem.task_names)[task.name]
                    (task.loss(out, targets[task.name]) * len(inputs) / len(ctx.calibration)).backward()
                for layer in layers:
                    grad = trainable(layer.module).grad
                    score = (effective(layer.module) * grad).abs() if grad is not None else effective(layer.module) * 0
                    per_task[layer.name].append(normalise(score))
            model.zero_grad(set_to_none=True)
        return sum(
            remove_weights(
                layer,
                lowest_fraction(ctx.combine(per_task[layer.name]), present(layer.module), value),
                self.name,
            )
            for layer in layers
        )
