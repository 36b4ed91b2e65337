"""The strategy protocol and its registry.

A :class:`Strategy` is a pruning *criterion* with one threshold whose meaning
and range are documented in its :class:`ThresholdSpec`. It scores the model
(already carrying earlier strategies' masks) on calibration data and removes
what scores below its threshold: single weights through
:mod:`automtl.pruning.layers`, whole units through :mod:`automtl.pruning.groups`.
Each strategy is one module of :mod:`automtl.pruning.strategies`, registered by
``@register``.

Example:
    >>> from automtl.pruning import STRATEGIES
    >>> STRATEGIES["magnitude"].threshold.high
    1.0
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import nn

from automtl.errors import UserError

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


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
