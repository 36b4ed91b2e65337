"""Task-loss weighting: how per-task losses become the one loss that is minimised.

One class per method behind :class:`Weighting`, selected by name from
``WEIGHTINGS`` (LibMTL's pattern).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

from torch import Tensor

from automtl.errors import UserError


class Weighting(ABC):
    """Combines ``{task: loss}`` into a scalar; may keep state across steps and epochs."""

    def __init__(self, task_names: list[str]):
        self.task_names = list(task_names)

    @abstractmethod
    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The scalar to back-propagate for one mini-batch."""

    def current(self) -> dict[str, float]:
        """The weight each task has now (for logging)."""
        return {name: 1.0 / len(self.task_names) for name in self.task_names}


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


WEIGHTINGS: dict[str, type[Weighting]] = {"static": Static}
