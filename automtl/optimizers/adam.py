"""Adam (Kingma & Ba), weight decay as an L2 term."""

import torch

from automtl.optimizers.base import OptimizerSettings, fused


def adam(groups: list[dict], settings: OptimizerSettings) -> torch.optim.Adam:
    return torch.optim.Adam(groups, betas=settings.betas, weight_decay=settings.weight_decay, fused=fused(groups))
