"""The Pareto front of a study and its hypervolume.

The front is Optuna's (``study.best_trials``: the non-dominated completed
trials). Hypervolume is computed by ``moocore`` on objectives normalised to
[0, 1] and oriented so that larger is better:

* sparsity and every accuracy as they are (they are fractions);
* a minimised cost (``nonzero_parameters``, ``flops``, ``latency_ms``) as
  ``1 - value / scale``, clipped to [0, 1], where the scale is the dense
  model's value (its parameter count, FLOPs, latency), stored on the study as
  ``scales`` when it is created.

The **reference point is the origin** (0 sparsity, 0 accuracy, all parameters
kept), so the hypervolume is in [0, 1] and comparable across studies of the
same problem and objectives.

The **knee** is the front point closest (Euclidean) to the ideal point after
each objective is min-max scaled over the front: the best balanced trade-off.
"""

from __future__ import annotations

import operator
import re

import moocore
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl.errors import UserError
from automtl.trial import MINIMIZE, STRUCTURAL


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated completed trials, by trial number."""
    return sorted(study.best_trials, key=lambda t: t.number) if completed(study) else []


def normalised(trials: list[FrozenTrial], directions: list[str], scales: list[float]) -> np.ndarray:
    """Objective values mapped to [0, 1], larger is better (see the module docstring)."""
    values = np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(directions))
    for j, direction in enumerate(directions):
        if direction == MINIMIZE:
            values[:, j] = np.clip(1.0 - values[:, j] / max(scales[j], 1e-12), 0.0, 1.0)
    return values


def hypervolume(trials: list[FrozenTrial], directions: list[str], scales: list[float]) -> float:
    """Hypervolume of ``trials`` w.r.t. the origin of the normalised space."""
    if not trials:
        return 0.0
    points = normalised(trials, directions, scales)
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
        **(attrs.get("structure") or {}),
        "order": attrs.get("order"),
        "thresholds": attrs.get("thresholds"),
        "loss_method": attrs.get("loss_method"),
        "loss_weights": attrs.get("loss_weights"),
        "distillation": attrs.get("distillation"),
        "weights": attrs.get("weights"),
    }


def directions_of(study: optuna.Study) -> tuple[list[str], list[float]]:
    """The study's objective directions and normalisation scales (older studies: the parameter count)."""
    attrs = study.user_attrs
    directions = attrs.get("directions", [])
    return directions, attrs.get("scales") or [attrs.get("total_parameters", 1)] * len(directions)


def ranks(study: optuna.Study, trials: list[FrozenTrial]) -> np.ndarray:
    """Pareto rank of each trial (0 = on the front, 1 = front once those are removed, …)."""
    if not trials:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(normalised(trials, *directions_of(study)), maximise=True))


def hypervolume_history(study: optuna.Study) -> list[tuple[int, float]]:
    """``(trial number, hypervolume of the completed trials numbered up to it)``."""
    directions, scales = directions_of(study)
    history, seen = [], []
    for trial in sorted(completed(study), key=lambda t: t.number):
        seen.append(trial)
        points = normalised(seen, directions, scales)
        seen = [t for t, keep in zip(seen, moocore.is_nondominated(points, maximise=True)) if keep]
        history.append((trial.number, hypervolume(seen, directions, scales)))
    return history


def knee(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The balanced front point (see the module docstring)."""
    trials = front(study) if trials is None else trials
    if not trials:
        return None
    points = normalised(trials, *directions_of(study))
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return trials[int(np.argmin(np.linalg.norm(1.0 - scaled, axis=1)))]


_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le}


def metric(trial: FrozenTrial, name: str) -> float | None:
    """A trial's value for a constraint name: a task (validation accuracy), ``test.<task>``,
    ``sparsity``, ``compression_ratio``, ``nonzero_parameters``, or a measured ``flops`` / ``latency_ms``."""
    attrs = trial.user_attrs
    if name in (attrs.get("structure") or {}):
        return attrs["structure"][name]
    if name.startswith("test.") and name[5:] in (attrs.get("test_accuracy") or {}):
        return attrs["test_accuracy"][name[5:]]
    if name in (attrs.get("accuracy") or {}):
        return attrs["accuracy"][name]
    value = attrs.get(name)
    return float(value) if isinstance(value, (int, float)) else None


def parse_constraints(texts: list[str], tasks: list[str]) -> list[tuple[str, str, float]]:
    """``["left>=0.92", "sparsity>=0.9"]`` -> ``[(name, op, value), …]``; bad ones raise UserError."""
    allowed = [*tasks, *(f"test.{t}" for t in tasks), "sparsity", "compression_ratio", "nonzero_parameters",
               *STRUCTURAL]
    parsed = []
    for text in texts:
        match = _CONSTRAINT.match(text)
        if not match or match.group(1) not in allowed:
            raise UserError(f"constraint {text!r} must look like NAME>=VALUE or NAME<=VALUE with NAME one of {allowed}")
        parsed.append((match.group(1), match.group(2), float(match.group(3))))
    return parsed


def select(trials: list[FrozenTrial], constraints: list[tuple[str, str, float]]) -> list[FrozenTrial]:
    """The trials meeting every constraint."""
    return [t for t in trials if all(
        (v := metric(t, name)) is not None and _OPS[op](v, bound) for name, op, bound in constraints)]


def require(trials: list[FrozenTrial], texts: list[str], tasks: list[str]) -> list[FrozenTrial]:
    """The trials meeting constraints like ``left>=0.92``; if none does, a UserError names the closest."""
    if not texts:
        return trials
    constraints = parse_constraints(texts, tasks)
    kept = select(trials, constraints)
    if kept or not trials:
        return kept

    def shortfall(trial: FrozenTrial) -> float:
        return sum(max(0.0, (v - metric(trial, n)) if op == ">=" else (metric(trial, n) - v)) for n, op, v in constraints)

    closest = sorted(trials, key=shortfall)[:3]
    described = "; ".join(
        f"trial {t.number} (" + ", ".join(f"{n} {metric(t, n):.4g}" for n, _, _ in constraints) + ")" for t in closest)
    raise UserError(f"no Pareto trial meets {' and '.join(texts)}; closest: {described}")
