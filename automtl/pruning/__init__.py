"""Model pruning: composable strategies behind one protocol, and the pipeline that orders them.

Every module of this package is imported here, so a strategy module registers itself
(``@register`` in :mod:`automtl.pruning.base`) just by being added.

Example:
    >>> from automtl.pruning import PruneContext, apply
    >>> model = problem.build_model()
    >>> ctx = PruneContext.create(model, problem)
    >>> report = apply(model, [("activation", 0.1), ("magnitude", 0.3)], ctx)
    >>> 0 < report.sparsity < 1
    True
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from automtl.pruning.base import STRATEGIES, PruneContext, Strategy, ThresholdSpec, get_strategy
from automtl.pruning.layers import make_permanent
from automtl.pruning.pipeline import PipelineReport, apply, measure

__all__ = [
    "STRATEGIES",
    "PipelineReport",
    "PruneContext",
    "Strategy",
    "ThresholdSpec",
    "apply",
    "get_strategy",
    "make_permanent",
    "measure",
]
