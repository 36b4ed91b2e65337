"""Task-loss weighting methods, one class per module, selected by name (LibMTL's pattern).

Example:
    >>> from automtl.weighting import make_weighting
    >>> make_weighting("static", ["left", "right"], weights={"left": 3, "right": 1}).current()
    {'left': 0.75, 'right': 0.25}
"""

from __future__ import annotations

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


def make_weighting(name: str, task_names: list[str], weights: Mapping[str, float] | None = None) -> Weighting:
    """A fresh weighting; ``weights`` apply to ``static`` only."""
    if name not in WEIGHTINGS:
        raise UserError(f"loss weighting {name!r} is unknown; allowed: {sorted(WEIGHTINGS)}")
    if name == "static":
        return Static(task_names, weights)
    return WEIGHTINGS[name](task_names)


__all__ = ["WEIGHTINGS", "DWA", "GradNorm", "Static", "Uncertainty", "Weighting", "make_weighting"]
