"""``uncertainty``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, 2018)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from automtl.weighting.base import Weighting, device_of


class Uncertainty(Weighting):
    """Learn a log-variance s_t per task; minimise sum_t exp(-s_t) L_t / 2 + s_t / 2."""

    def __init__(self, task_names: list[str]):
        super().__init__(task_names)
        self.log_vars = torch.zeros(len(task_names), requires_grad=True)

    def bind(self, model: nn.Module) -> None:
        self.log_vars = self.log_vars.detach().to(device_of(model)).requires_grad_()

    def parameters(self) -> list[Tensor]:
        return [self.log_vars]

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = torch.stack([losses[n] for n in self.task_names])
        return (0.5 * torch.exp(-self.log_vars) * stacked + 0.5 * self.log_vars).sum()

    def current(self) -> dict[str, float]:
        precision = torch.exp(-self.log_vars.detach())
        return dict(zip(self.task_names, (precision / precision.sum()).tolist()))
