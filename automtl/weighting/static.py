"""``static``: fixed task weights (given, or sampled on the simplex by the search)."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from automtl.errors import UserError
from automtl.weighting.base import Weighting


class Static(Weighting):
    """Fixed weights, normalised to sum to 1 (equal weights when none are given)."""

    def __init__(self, task_names: list[str], weights: Mapping[str, float] | None = None):
        super().__init__(task_names)
        weights = dict(weights) if weights else {n: 1.0 for n in task_names}
        if set(weights) != set(task_names):
            raise UserError(f"loss weights must name exactly the tasks {task_names}, got {sorted(weights)}")
        if any(not w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise UserError(f"loss weights must be >= 0 with a positive sum, got {weights}")
        total = sum(weights.values())
        self.weights = {n: weights[n] / total for n in task_names}

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        return sum(self.weights[n] * losses[n] for n in self.task_names)

    def current(self) -> dict[str, float]:
        return dict(self.weights)
