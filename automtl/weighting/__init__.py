"""Task-loss weighting methods, one class per module, selected by name (LibMTL's pattern).

Example:
    >>> from automtl.weighting import make_weighting
    >>> make_weighting("static", ["left", "right"], weights={"left": 3, "right": 1}).current()
    {'left': 0.75, 'right': 0.25}
"""

from __future__ import annotations

import inspect
from typing import Mapping

from automtl.errors import UserError
from automtl.weighting.base import Weighting
from automtl.weighting.dwa import DWA
from automtl.weighting.gradnorm import GradNorm
from automtl.weighting.static import Static
from automtl.weighting.uncertainty import Uncertainty

WEIGHTINGS: dict[str, type[Weighting]] = {
    "static": Static,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "gradnorm": GradNorm,
}


def options_of(name: str) -> list[str]:
    """The hyperparameters a weighting takes from the config (``loss_weights.options.<name>``)."""
    params = inspect.signature(WEIGHTINGS[name]).parameters
    return [p for p in params if p not in ("task_names", "weights")]


def make_weighting(name: str, task_names: list[str], weights: Mapping[str, float] | None = None,
                   options: Mapping[str, float] | None = None) -> Weighting:
    """A fresh weighting; ``weights`` apply to ``static`` only, ``options`` are the method's hyperparameters.

    Example:
        >>> make_weighting("dwa", ["left", "right"], options={"temperature": 1.5}).temperature
        1.5
    """
    if name not in WEIGHTINGS:
        raise UserError(f"loss weighting {name!r} is unknown; allowed: {sorted(WEIGHTINGS)}")
    unknown = sorted(set(options or {}) - set(options_of(name)))
    if unknown:
        raise UserError(f"loss weighting {name!r} has no option {unknown[0]!r}; allowed: {options_of(name)}")
    if name == "static":
        return Static(task_names, weights)
    return WEIGHTINGS[name](task_names, **(options or {}))


__all__ = ["WEIGHTINGS", "DWA", "GradNorm", "Static", "Uncertainty", "Weighting", "make_weighting", "options_of"]
