"""The task-weighting protocol: how per-task losses become the one loss that is minimised."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch
from torch import Tensor, nn


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (learned task weights must live there too)."""
    return next(model.parameters()).device


class Weighting(ABC):
    """Combines ``{task: loss}`` into a scalar; may learn parameters and keep state.

    The training loop calls :meth:`bind` once, optimises :meth:`parameters`
    together with the model's, and calls :meth:`after_step` after every
    optimiser step and :meth:`after_epoch` with the epoch's mean task losses.
    """

    stackable = True
    """Whether several models can fine-tune together (:mod:`automtl.stacked`) with this method: False
    for one that reads the model's own parameters (GradNorm's gradient norms)."""

    def __init__(self, task_names: list[str]):
        self.task_names = list(task_names)

    def bind(self, model: nn.Module) -> None:
        """See the model before training starts (GradNorm needs its shared layer)."""

    def parameters(self) -> list[Tensor]:
        """Extra parameters to optimise with the model's."""
        return []

    @abstractmethod
    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """The scalar to back-propagate for one mini-batch."""

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def after_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called after each epoch with its mean task losses."""

    def current(self) -> dict[str, float]:
        """The weight each task has now, summing to 1 (for logging)."""
        return {name: 1.0 / len(self.task_names) for name in self.task_names}
