"""Model pruning: composable strategies behind one protocol, and the pipeline that orders them.

Example:
    >>> from automtl.pruning import PruneContext, apply
    >>> ctx = PruneContext.create(model, problem)  # doctest: +SKIP
    >>> report = apply(model, [("activation", 0.1), ("magnitude", 0.3)], ctx)  # doctest: +SKIP
    >>> report.sparsity, report.compression_ratio  # doctest: +SKIP
"""

from automtl.pruning import (  # noqa: F401  (each module registers its strategy)
    activation,
    clustering,
    entropy,
    global_magnitude,
    magnitude,
    random,
    sparse_opt,
    stability,
    taylor,
)
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
