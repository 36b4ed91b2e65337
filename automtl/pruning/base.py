"""The strategy protocol, its registry, and the context every strategy receives.

A :class:`Strategy` is a pruning *criterion* with one threshold whose meaning
and range are documented in its :class:`ThresholdSpec`. It scores the model
(already carrying earlier strategies' masks) on calibration data and removes
what scores below its threshold: single weights through
:mod:`automtl.pruning.layers`, whole units through :mod:`automtl.pruning.groups`.

Example:
    >>> from automtl.pruning import STRATEGIES
    >>> STRATEGIES["magnitude"].threshold.high
    1.0
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from automtl.errors import UserError
from automtl.problems.base import Problem, Split
from automtl.pruning.groups import UnitGroup
from automtl.pruning.layers import PRUNABLE, Layer, discover
from automtl.pruning.shrink import removable_groups

log = logging.getLogger(__name__)

Aggregate = Literal["max", "mean", "min"]
AGGREGATES: dict[str, callable] = {
    "max": lambda s: s.max(dim=0).values,  # keep what any task needs
    "mean": lambda s: s.mean(dim=0),
    "min": lambda s: s.min(dim=0).values,
}
HEADS = ("exclude", "include")


@dataclass(frozen=True)
class ThresholdSpec:
    """A strategy's threshold: its symbol, what it means, its allowed range, its natural scale, and whether
    it is *calibrated*: the share of the candidates (weights or units) it removes, whatever the model."""

    symbol: str
    meaning: str
    low: float
    high: float
    log: bool = False
    calibrated: bool = False

    def validate(self, strategy: str, value: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"strategy {strategy!r}: threshold {self.symbol} must be a number, got {value!r}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise UserError(
                f"strategy {strategy!r}: threshold {self.symbol} must be in "
                f"[{self.low:g}, {self.high:g}], got {value!r}"
            )
        return float(value)


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

    def require(self, model: nn.Module, strategies: list[str]) -> None:
        """Refuse (UserError) a model the named strategies cannot prune; warn about layers they must skip."""
        if not self.weight_layers:
            kinds = sorted({type(m).__name__ for m in model.modules()})
            raise UserError(f"the model has no {'/'.join(t.__name__ for t in PRUNABLE)} layer to prune "
                            f"(besides output layers); its modules are {kinds}")
        structured = [name for name in strategies if get_strategy(name).structured]
        unstructured = sorted(name for name, s in STRATEGIES.items() if not s.structured)
        if structured and self.untraceable:
            raise UserError(f"Torch-Pruning cannot trace this model ({self.untraceable}); the structured strategies "
                            f"{structured} need its dependency graph (a reshape of the channels it cannot follow, "
                            f"such as a channel shuffle, breaks it). Remove them from pruning.strategies; the "
                            f"unstructured ones {unstructured} work on any model")
        if structured and not self.groups:
            reasons = "; ".join(f"{root}: {why}" for root, why in self.refused.items()) or "no hidden layer"
            raise UserError(f"the structured strategies {structured} find no removable unit in this model "
                            f"({reasons}); use the unstructured ones {unstructured}")
        for root, why in self.refused.items() if structured else ():
            log.warning("structured strategies leave the units of %s alone: %s", root, why)

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


def normalise(scores: Tensor) -> Tensor:
    """Scale non-negative scores to [0, 1] by their maximum (all-zero stays zero)."""
    top = scores.max()
    return scores / top if top > 0 else scores


def lowest_fraction(scores: Tensor, candidates: Tensor, fraction: float) -> Tensor:
    """Bool mask of the ``floor(fraction * #candidates)`` lowest-scoring candidates.

    Ties break by position, so a larger fraction always removes a superset.
    """
    flat_scores, flat_candidates = scores.flatten(), candidates.flatten()
    count = math.floor(fraction * int(flat_candidates.sum()))
    remove = torch.zeros_like(flat_candidates)
    if count > 0:
        ranked = torch.where(flat_candidates, flat_scores, torch.inf)
        order = torch.sort(ranked, stable=True).indices[:count]
        remove[order] = True
    return remove.view_as(candidates)


class Strategy(ABC):
    """A pruning criterion with one normalised threshold."""

    name: ClassVar[str]
    threshold: ClassVar[ThresholdSpec]
    structured: ClassVar[bool]

    def __call__(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        """Validate ``value`` and prune; returns how many units (structured) or weights were removed."""
        value = self.threshold.validate(self.name, value)
        if self.structured and ctx.untraceable:
            raise UserError(f"strategy {self.name!r} needs the model's dependency graph: {ctx.untraceable}")
        return self.prune(model, ctx, value)

    @abstractmethod
    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        """Add masks to ``model`` for what scores below ``value``."""

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]


STRATEGIES: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add one instance of the strategy to ``STRATEGIES`` under ``cls.name``."""
    STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UserError(f"strategy {name!r} is unknown; allowed: {sorted(STRATEGIES)}")
    return STRATEGIES[name]
