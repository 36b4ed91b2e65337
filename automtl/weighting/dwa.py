"""``dwa``: Dynamic Weight Average (Liu, Johns & Davison, 2019)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from automtl.weighting.base import Weighting


class DWA(Weighting):
    """Weight tasks by how slowly their loss fell over the last two epochs: softmax(r_t / T)."""

    def __init__(self, task_names: list[str], temperature: float = 2.0):
        super().__init__(task_names)
        self.temperature = temperature
        self.history: list[Mapping[str, float]] = []
        self.weights = torch.full((len(task_names),), 1.0 / len(task_names))

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        return sum(w * losses[n] for w, n in zip(self.weights.tolist(), self.task_names))

    def after_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self.history = [*self.history[-1:], dict(mean_losses)]
        if len(self.history) == 2:
            prev, last = self.history
            rates = torch.tensor([last[n] / max(prev[n], 1e-12) for n in self.task_names])
            self.weights = torch.softmax(rates / self.temperature, dim=0)

    def current(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.weights.tolist()))
