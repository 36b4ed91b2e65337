"""What a strategy may look at besides the model: the :class:`PruneContext`.

It holds the calibration sample, the prunable layers and the removable unit
groups (traced once with Torch-Pruning, each checked to be cut exactly), and
says how per-task scores combine (``aggregate``) and whether task heads'
weights may be pruned (``heads``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from automtl.errors import UserError
from automtl.problems.base import Problem, Split
from automtl.pruning.groups import UnitGroup
from automtl.pruning.layers import HEADS, Layer, discover
from automtl.pruning.scoring import AGGREGATES, Aggregate
from automtl.pruning.shrink import removable_groups

@dataclass
class PruneContext:
    """What a strategy may look at besides the model.

    ``aggregate`` combines per-task scores (``max`` keeps what any task needs);
    ``heads`` says whether output layers' weights may be pruned (their units,
    the classes, never are). ``groups`` are the removable unit groups (each checked to be cut exactly,
    :func:`~automtl.pruning.shrink.removable_groups`); ``refused`` names the coupled layers that are not
    removable and why, and
    ``untraceable`` says why Torch-Pruning could not trace the model at all.
    """

    problem: Problem
    calibration: Split
    layers: list[Layer]
    groups: list[UnitGroup] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    untraceable: str | None = None
    aggregate: Aggregate = "max"
    heads: Literal["exclude", "include"] = "exclude"
    seed: int = 0
    batch_size: int = 128
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise UserError(f"aggregate {self.aggregate!r} is unknown; allowed: {sorted(AGGREGATES)}")
        if self.heads not in HEADS:
            raise UserError(f"heads {self.heads!r} is unknown; allowed: {list(HEADS)}")
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def create(cls, model: nn.Module, problem: Problem, calibration_size: int = 1024, **kwargs) -> "PruneContext":
        """A context whose calibration set is a seeded sample of the training split, in memory."""
        calibration = problem.train.sample(calibration_size, torch.Generator().manual_seed(kwargs.get("seed", 0)))
        layers = discover(model, calibration.inputs, problem.task_names)
        try:
            found = removable_groups(model, calibration.inputs, problem.task_names,
                                     {layer.name for layer in layers if layer.is_output})
            structure = {"groups": found.groups, "refused": found.refused}
        except Exception as exc:  # noqa: BLE001 - any tracing failure only disables structured strategies
            structure = {"untraceable": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}" if str(exc)
                         else type(exc).__name__}
        return cls(problem=problem, calibration=calibration, layers=layers, **structure, **kwargs)

    @property
    def weight_layers(self) -> list[Layer]:
        """Layers whose individual weights may be removed."""
        return [layer for layer in self.layers if self.heads == "include" or not layer.is_output]

    def combine(self, per_task: list[Tensor]) -> Tensor:
        """Aggregate per-task scores of one layer, each already normalised to [0, 1].

        Tasks whose score is identically zero there (e.g. another task's head) are ignored.
        """
        reaching = [s for s in per_task if s.any()] or per_task
        return AGGREGATES[self.aggregate](torch.stack(reaching))
