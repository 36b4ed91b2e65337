"""Model pruning: composable strategies behind one protocol, and the mechanics they share.

``strategies/`` holds the criteria, one module each (they register themselves);
the other modules are the mechanics: the protocol and registry (``registry``),
what a strategy sees (``context``), scoring helpers (``scoring``), weight masks
(``layers``), unit groups (``groups``), the activation probe (``probe``), the
ordered pipeline (``pipeline``), gradual masks (``gradual``) and physical
removal (``shrink``).

Example:
    >>> from automtl.pruning import PruneContext, apply
    >>> model = problem.build_model()
    >>> ctx = PruneContext.create(model, problem)
    >>> report = apply(model, [("activation", 0.1), ("magnitude", 0.3)], ctx)
    >>> 0 < report.sparsity < 1
    True
"""

import importlib

from automtl.pruning import strategies  # noqa: F401 - registers every strategy
from automtl.pruning.registry import STRATEGIES, Strategy, ThresholdSpec, get_strategy

# The mechanics trace models with Torch-Pruning: they load on first use, so the registry (which the config's
# schema reads) comes without them and reading a run directory never imports Torch-Pruning.
_MECHANICS = {"PruneContext": "context", "make_permanent": "layers", "PipelineReport": "pipeline", "apply": "pipeline",
              "describe": "pipeline", "require": "pipeline"}

__all__ = ["STRATEGIES", "Strategy", "ThresholdSpec", "get_strategy", *_MECHANICS]


def __getattr__(name: str):
    if name in _MECHANICS:
        return getattr(importlib.import_module(f"{__name__}.{_MECHANICS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
