"""``sparse_opt``: sparse optimisation — a short proximal-L1 (ISTA) fine-tune, then exact zeros go."""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
from torch import nn

from automtl.models import in_mode
from automtl.pruning.registry import Strategy, ThresholdSpec, register
from automtl.pruning.layers import effective, present, remove_weights, trainable
from automtl.train import task_losses

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext

EPOCHS = 2  # passes over the calibration set
LR = 0.05  # SGD step size


def _proximal_step(weight: torch.Tensor, shrink: torch.Tensor, kept: torch.Tensor) -> None:
    """Soft-threshold ``weight`` in place; the layer's largest present weight never reaches zero."""
    shrunk = weight.sign() * (weight.abs() - shrink).clamp_min(0)
    if not shrunk[kept].ne(0).any():
        largest = int(torch.where(kept, weight.abs(), -1.0).argmax())
        shrunk.view(-1)[largest] = weight.view(-1)[largest]
    weight.copy_(shrunk)


@register
class SparseOpt(Strategy):
    """Fine-tune with SGD + an L1 proximal step of total strength lambda (in units of each layer's mean |w|); remove weights that reach exactly zero."""

    name = "sparse_opt"
    structured = False
    threshold = ThresholdSpec(
        "lambda", "total L1 shrinkage per weight over the fine-tune, in units of its layer's mean |w|", 0.0, 4.0
    )

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        layers = ctx.weight_layers
        steps = EPOCHS * math.ceil(len(ctx.calibration) / ctx.batch_size)
        shrink = {
            layer.name: value * effective(layer.module)[present(layer.module)].abs().mean() / steps
            for layer in layers
        }
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        with in_mode(model, True):
            for _ in range(EPOCHS):
                for inputs, targets in ctx.calibration.batches(ctx.batch_size, ctx.generator):
                    losses = task_losses(model, ctx.problem, inputs, targets)
                    optimizer.zero_grad(set_to_none=True)
                    (sum(losses.values()) / len(losses)).backward()
                    optimizer.step()
                    with torch.no_grad():
                        for layer in layers:
                            _proximal_step(trainable(layer.module), shrink[layer.name], present(layer.module))
        return sum(
            remove_weights(layer, effective(layer.module).eq(0), self.name) for layer in layers
        )
