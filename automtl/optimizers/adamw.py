"""AdamW (Loshchilov & Hutter): Adam with decoupled weight decay."""

import torch

from automtl.optimizers.base import OptimizerSettings, fused


def adamw(groups: list[dict], settings: OptimizerSettings) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=settings.betas, weight_decay=settings.weight_decay, fused=fused(groups))
