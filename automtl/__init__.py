"""automtl: compress multi-task networks by jointly searching pruning order, thresholds and loss weights.

The public API is re-exported here; everything else is private to its module.
"""

from automtl.api import DenseReport, train_dense
from automtl.errors import UserError
from automtl.models import ModelSpec, MultiTaskNet, build_model
from automtl.problems import PROBLEMS, DatasetSplit, Problem, Split, Task, get_problem
from automtl.train import TrainConfig, evaluate

__all__ = [
    "PROBLEMS",
    "DatasetSplit",
    "DenseReport",
    "ModelSpec",
    "MultiTaskNet",
    "Problem",
    "Split",
    "Task",
    "TrainConfig",
    "UserError",
    "build_model",
    "evaluate",
    "get_problem",
    "train_dense",
]
