"""Stochastic gradient descent with (optionally Nesterov) momentum, weight decay as an L2 term."""

import torch

from automtl.optimizers.base import OptimizerSettings, fused


def sgd(groups: list[dict], settings: OptimizerSettings) -> torch.optim.SGD:
    return torch.optim.SGD(groups, momentum=settings.momentum, nesterov=settings.nesterov,
                           weight_decay=settings.weight_decay, fused=fused(groups))
