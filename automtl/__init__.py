"""automtl: compress multi-task networks by jointly searching pruning order, thresholds and loss weights.

The public API is re-exported here; everything else is private to its module. Each name is imported from
its module on first use, so ``import automtl.rundir`` (what every read-only view of a run needs) loads
neither the search nor Torch-Pruning.

Example:
    >>> import automtl
    >>> sorted(automtl.PROBLEMS)[:2]
    ['mnist1d-pair', 'multidigits']
"""

import importlib

_PUBLIC = {
    "automtl.api": ("DenseReport", "SearchSummary", "export", "front", "inspect", "load_study", "search",
                    "train_dense"),
    "automtl.config": ("SearchConfig",),
    "automtl.errors": ("UserError",),
    "automtl.formats.sparse": ("load_pruned",),
    "automtl.models": ("ModelSpec", "MultiTaskNet", "build_model"),
    "automtl.problems": ("PROBLEMS", "DatasetSplit", "Problem", "Split", "Task", "get_problem"),
    "automtl.records": ("TrialRecord", "TrialResult"),
    "automtl.train": ("TrainConfig", "evaluate"),
}
_HOME = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'automtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
