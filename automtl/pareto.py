"""The Pareto front of a study and its hypervolume.

The front is Optuna's (``study.best_trials``: the non-dominated completed
trials). Hypervolume is computed by ``moocore`` on objectives normalised to
[0, 1] and oriented so that larger is better:

* sparsity and every accuracy as they are (they are fractions);
* ``nonzero_parameters`` as ``1 - nonzero / total parameters``.

The **reference point is the origin** (0 sparsity, 0 accuracy, all parameters
kept), so the hypervolume is in [0, 1] and comparable across studies of the
same problem and objectives.
"""

from __future__ import annotations

import moocore
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.trial import MINIMIZE


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated completed trials, by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number) if completed(study) else []


def normalised(trials: list[FrozenTrial], directions: list[str], total_parameters: int) -> np.ndarray:
    """Objective values mapped to [0, 1], larger is better (see the module docstring)."""
    values = np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(directions))
    for j, direction in enumerate(directions):
        if direction == MINIMIZE:
            values[:, j] = 1.0 - values[:, j] / max(1, total_parameters)
    return values


def hypervolume(trials: list[FrozenTrial], directions: list[str], total_parameters: int) -> float:
    """Hypervolume of ``trials`` w.r.t. the origin of the normalised space."""
    if not trials:
        return 0.0
    points = normalised(trials, directions, total_parameters)
    return float(moocore.hypervolume(points, ref=np.zeros(points.shape[1]), maximise=True))


def describe(trial: FrozenTrial) -> dict:
    """A finished trial as users read it: metrics, decoded plan, where its weights are."""
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "sparsity": attrs.get("sparsity"),
        "accuracy": attrs.get("accuracy"),
        "test_accuracy": attrs.get("test_accuracy"),
        "compression_ratio": attrs.get("compression_ratio"),
        "nonzero_parameters": attrs.get("nonzero_parameters"),
        "order": attrs.get("order"),
        "thresholds": attrs.get("thresholds"),
        "loss_method": attrs.get("loss_method"),
        "loss_weights": attrs.get("loss_weights"),
        "distillation": attrs.get("distillation"),
        "weights": attrs.get("weights"),
    }
