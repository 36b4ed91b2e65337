"""Gradual pruning: reach a plan's masks in steps while fine-tuning (Zhu & Gupta 2017's cubic schedule).

The plan's strategies run first, as in one-shot pruning, and fix the final
masks. :class:`GradualMasks` then reopens every mask and, at ``steps`` evenly
spaced optimiser steps, removes the share ``1 - (1 - k / steps)^3`` (step
``k = 1..steps``) of what each mask removes, smallest current ``|w|`` first.
What is removed stays removed, and the last step restores exactly the plan's
masks, so sparsity, empty units and export are those of the plan.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cubic_share(k: int, steps: int) -> float:
    """The share of the final removal done after step ``k`` of ``steps``."""
    return 1.0 - (1.0 - k / steps) ** 3


class GradualMasks:
    """Reopens ``model``'s masks now; called with the optimiser step before each step's forward pass, it
    closes them along the cubic schedule over the first ``span`` optimiser steps."""

    def __init__(self, model: nn.Module, steps: int, span: int):
        self.targets: list[tuple[nn.Module, str, Tensor]] = []
        for module in model.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                if name.endswith("_mask") and hasattr(module, name[: -len("_mask")] + "_orig"):  # torch prune's
                    self.targets.append((module, name, buffer.detach().clone()))
                    buffer.fill_(1)
        span = max(1, span)
        # Steps that fall on the same optimiser step (span < steps): the largest share wins.
        self.schedule = {math.floor((k - 1) * span / steps): cubic_share(k, steps) for k in range(1, steps + 1)}

    def __call__(self, step: int) -> None:
        share = self.schedule.get(step)
        if share is not None:
            self.close(share)

    @torch.no_grad()
    def close(self, share: float) -> None:
        """Remove ``share`` of every mask's final removal (what is already removed counts first)."""
        for module, name, final in self.targets:
            mask = getattr(module, name)
            if share >= 1.0:
                mask.copy_(final)
                continue
            removable = final.eq(0)
            count = round(share * int(removable.sum()))
            if count == 0:
                continue
            strength = getattr(module, name[: -len("_mask")] + "_orig").detach().abs()
            strength = torch.where(mask.eq(0), -1.0, strength)  # what is removed stays removed
            ranked = torch.where(removable, strength, torch.inf).flatten()
            remove = torch.zeros_like(removable).flatten()
            remove[torch.sort(ranked, stable=True).indices[:count]] = True
            mask.copy_(torch.where(remove.view_as(mask), torch.zeros_like(mask), torch.ones_like(mask)))
