"""automtl: compress multi-task networks by jointly searching pruning order, thresholds and loss weights.

The public API is re-exported here; everything else is private to its module.

Example:
    >>> import automtl
    >>> sorted(automtl.PROBLEMS)[:2]
    ['mnist1d-pair', 'multidigits']
"""

from automtl.api import DenseReport, SearchSummary, export, front, inspect, load_study, search, train_dense
from automtl.config import SearchConfig
from automtl.errors import UserError
from automtl.formats.sparse import load_pruned
from automtl.models import ModelSpec, MultiTaskNet, build_model
from automtl.problems import PROBLEMS, DatasetSplit, Problem, Split, Task, get_problem
from automtl.records import TrialRecord, TrialResult
from automtl.train import TrainConfig, evaluate

__all__ = [
    "PROBLEMS",
    "DatasetSplit",
    "DenseReport",
    "ModelSpec",
    "MultiTaskNet",
    "Problem",
    "SearchConfig",
    "SearchSummary",
    "Split",
    "Task",
    "TrainConfig",
    "TrialRecord",
    "TrialResult",
    "UserError",
    "build_model",
    "evaluate",
    "export",
    "front",
    "get_problem",
    "inspect",
    "load_pruned",
    "load_study",
    "search",
    "train_dense",
]
