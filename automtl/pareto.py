"""The Pareto front of a study, its ranks, knee and hypervolume, and constraints on trials.

The front is the non-dominated set of the completed trials, in each
objective's direction (weakly: equal trials are all kept), whatever their
focus constraints; trials a rung stopped early never belong to it. Objectives, their directions and
their bounds come from :mod:`automtl.objectives`.

The **hypervolume** is computed by ``moocore`` on objectives normalised to
[0, 1] by their bounds (1 = ideal, 0 = nadir), with the **origin as reference
point**, so it is in [0, 1] and comparable across studies of the same problem
and objectives. Ranks and the knee use the values themselves, oriented so that
larger is better.

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
from automtl.objectives import Objective, of_study, task_objectives
from automtl.records import TrialRecord


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated completed trials, by trial number (all of them: a focus region's constraints steer
    the samplers, they do not hide trials; Optuna's ``best_trials`` would keep only the feasible ones)."""
    trials = sorted(completed(study), key=lambda t: t.number)
    if not trials:
        return []
    keep = moocore.is_nondominated(oriented(trials, of_study(study)), maximise=True, keep_weakly=True)
    return [t for t, kept in zip(trials, keep) if kept]


def _values(trials: list[FrozenTrial], objectives: list[Objective]) -> np.ndarray:
    return np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(objectives))


def normalised(trials: list[FrozenTrial], objectives: list[Objective]) -> np.ndarray:
    """Objective values mapped to [0, 1] by their bounds, 1 = ideal (see the module docstring)."""
    values = _values(trials, objectives)
    for j, objective in enumerate(objectives):
        values[:, j] = objective.normalise(values[:, j])
    return values


def oriented(trials: list[FrozenTrial], objectives: list[Objective]) -> np.ndarray:
    """Objective values with minimised ones negated: larger is better in every column."""
    return _values(trials, objectives) * np.array([1.0 if o.maximize else -1.0 for o in objectives])


def hypervolume(trials: list[FrozenTrial], objectives: list[Objective]) -> float:
    """Hypervolume of ``trials`` w.r.t. the origin of the normalised space."""
    if not trials:
        return 0.0
    points = normalised(trials, objectives)
    return float(moocore.hypervolume(points, ref=np.zeros(points.shape[1]), maximise=True))


def describe(trial: FrozenTrial, objectives: list[Objective]) -> dict:
    """A finished trial as users read it: objectives (named, with directions), metrics, plan, weights."""
    record = TrialRecord.from_trial(trial)
    result = record.result
    return {
        "trial": record.number,
        "objectives": dict(zip([o.name for o in objectives], record.values or ())),
        "directions": {o.name: o.direction for o in objectives},
        "sparsity": result.sparsity,
        "metrics": result.metrics,
        "test_metrics": result.test_metrics,
        "compression_ratio": result.compression_ratio,
        "nonzero_parameters": result.nonzero_parameters,
        **result.structure,
        **record.plan,
        "weights": result.weights,
    }


def described_front(study: optuna.Study) -> list[dict]:
    """:func:`describe` of every front trial."""
    objectives = of_study(study)
    return [describe(t, objectives) for t in front(study)]


def ranks(study: optuna.Study, trials: list[FrozenTrial]) -> np.ndarray:
    """Pareto rank of each trial (0 = on the front, 1 = front once those are removed, …)."""
    if not trials:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(oriented(trials, of_study(study)), maximise=True))


def hypervolume_history(study: optuna.Study) -> list[tuple[int, float]]:
    """``(trial number, hypervolume of the completed trials numbered up to it)``."""
    objectives = of_study(study)
    history, seen = [], []
    for trial in sorted(completed(study), key=lambda t: t.number):
        seen.append(trial)
        seen = [t for t, keep in zip(seen, moocore.is_nondominated(oriented(seen, objectives), maximise=True))
                if keep]
        history.append((trial.number, hypervolume(seen, objectives)))
    return history


def knee(study: optuna.Study, trials: list[FrozenTrial] | None = None) -> FrozenTrial | None:
    """The balanced front point (see the module docstring)."""
    trials = front(study) if trials is None else trials
    if not trials:
        return None
    points = oriented(trials, of_study(study))
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return trials[int(np.argmin(np.linalg.norm(1.0 - scaled, axis=1)))]


_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")
_OPS = {">=": operator.ge, "<=": operator.le}
CONSTRAINABLE = ("sparsity", "compression_ratio", "nonzero_parameters", "flops", "latency_ms")


def metric(trial: FrozenTrial, name: str) -> float | None:
    """A trial's value for a constraint name: a task (its validation metric), ``test.<task>``, an objective
    (``sparsity``, ``mse.ink``, ``flops``, …), ``compression_ratio`` or ``nonzero_parameters``."""
    result = TrialRecord.from_trial(trial).result
    if result is None:
        return None
    prefix, _, task = name.partition(".")
    if prefix == "test" and task in result.test_metrics:
        return result.test_metrics[task]
    if task in result.metrics:  # <metric_name>.<task>
        return result.metrics[task]
    if name in result.metrics:  # a bare task name
        return result.metrics[name]
    value = result.structure.get(name, getattr(result, name, None) if name in CONSTRAINABLE else None)
    return float(value) if isinstance(value, (int, float)) else None


def constraint_names(objectives: list[Objective]) -> list[str]:
    """Every name a constraint may use."""
    tasks = list(task_objectives(objectives))
    return list(dict.fromkeys([*tasks, *(f"test.{t}" for t in tasks), *(o.name for o in objectives), *CONSTRAINABLE]))


def parse_constraints(texts: list[str], objectives: list[Objective]) -> list[tuple[str, str, float]]:
    """``["left>=0.92", "mse.ink<=0.05"]`` -> ``[(name, op, value), …]``; bad ones raise UserError."""
    allowed = constraint_names(objectives)
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


def require(trials: list[FrozenTrial], texts: list[str], objectives: list[Objective]) -> list[FrozenTrial]:
    """The trials meeting constraints like ``left>=0.92``; if none does, a UserError names the closest."""
    if not texts:
        return trials
    constraints = parse_constraints(texts, objectives)
    kept = select(trials, constraints)
    if kept or not trials:
        return kept

    def shortfall(trial: FrozenTrial) -> float:
        return sum(max(0.0, (v - metric(trial, n)) if op == ">=" else (metric(trial, n) - v)) for n, op, v in constraints)

    closest = sorted(trials, key=shortfall)[:3]
    described = "; ".join(
        f"trial {t.number} (" + ", ".join(f"{n} {metric(t, n):.4g}" for n, _, _ in constraints) + ")" for t in closest)
    raise UserError(f"no Pareto trial meets {' and '.join(texts)}; closest: {described}")


def choose(study: optuna.Study, trial: int | None, pick: str | None, constraints: list[str]) -> FrozenTrial:
    """The trial to export: an explicit number, or a Pareto point picked by rule under constraints.

    ``knee`` is the balanced point, ``sparsest`` the highest sparsity, ``best-<task>`` the best value of
    the task's metric in its direction (highest accuracy, lowest MSE, …)."""
    objectives = of_study(study)
    if trial is not None:
        found = [t for t in study.trials if t.number == trial]
        if not found:
            raise UserError(f"trial {trial} does not exist; the study has trials 0-{len(study.trials) - 1}")
        if found[0].state != TrialState.COMPLETE:
            raise UserError(f"trial {trial} is {found[0].state.name.lower()}, not complete; only finished trials "
                            f"can be exported (see `automtl pareto`)")
        return found[0]
    pick = pick or "knee"
    columns = {o.name: j for j, o in enumerate(objectives)}
    rules = {"knee": None, "sparsest": objectives[columns["sparsity"]]}
    rules |= {f"best-{task}": objective for task, objective in task_objectives(objectives).items()}
    if pick not in rules:
        raise UserError(f"--pick {pick!r} is unknown; allowed: {list(rules)}")
    points = front(study)
    if not points:
        raise UserError("the study has no completed trial to export yet")
    candidates = require(points, constraints, objectives)
    if rules[pick] is None:
        return knee(study, candidates)
    objective = rules[pick]
    column = columns[objective.name]
    return max(candidates, key=lambda t: t.values[column] if objective.maximize else -t.values[column])
