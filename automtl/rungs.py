"""Multi-fidelity for the multi-objective search: MO-ASHA's stopping rule over fine-tune epochs.

Fine-tune epochs are the fidelity. A trial is judged at every milestone of
``rungs`` (:meth:`~automtl.config.RungsConfig.milestones`, e.g. 1, 3 of 9
epochs): it records its objective values there on its own Optuna trial (user
attribute ``rungs``: ``{epochs: values}``), reads the records every other
running, complete or stopped trial left at that rung, and goes on only while it
is non-dominated among the ``n`` trials judged there so far, or among the best
``ceil(n / reduction)`` of them. Best means the lowest non-dominated rank
(``moocore``), ties broken by the larger crowding distance (NSGA-II's), then by
trial number. Keeping the whole non-dominated set (not only its most crowded-out
members) keeps the front's middle, where plans trade a little of every task
for sparsity; a dominated plan goes on only while few plans reached the rung.
That is ``promote: rank``; ``promote: hypervolume`` instead lets on only the
``ceil(n / reduction)`` trials whose own share of the rung's hypervolume is the
largest (reference: just below the worst value of each objective there), so a
dominated plan never goes on and the budget follows the plans that widen the
front most; neither syne-tune's MO-ASHA nor Optuna promotes this way. A trial that is
stopped is told to Optuna as ``PRUNED`` ("stopped early" in ``status``, the
dashboard and MLflow); only trials that reach the full fine-tune are complete,
so only they form the front. The first trial at a rung always goes on, as in
ASHA (Li et al. 2020; multi-objective: Schmucker et al. 2021, syne-tune's
``MOASHA``). Records live in the study, so the rule works across worker
processes, Ray workers and ``--resume``. Locally a trial interrupted mid-rung
fails as interrupted and its records stop counting (a new trial re-spends
it); on Ray, ``Tuner.restore`` re-runs the same trial, which rewrites its
records with the same values (trials are seeded by number).

Example:
    >>> goes_on(2, {0: [0.5, 0.9], 1: [0.9, 0.9], 2: [0.4, 0.8]}, ["maximize", "maximize"], reduction=3)
    False
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import moocore
import numpy as np
import optuna
from optuna.trial import TrialState

from automtl import objectives
from automtl.metrics import MAXIMIZE
from automtl.records import RUNGS

if TYPE_CHECKING:
    from automtl.config import SearchConfig
    from automtl.problems import Problem

JUDGED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def judged_objectives(config: "SearchConfig", problem: "Problem") -> list[objectives.Objective]:
    """The objectives a rung compares: every declared one except those measured on the shrunk model
    (FLOPs and latency, which fine-tuning does not change)."""
    return [o for o in objectives.declared(config, problem) if o.name not in objectives.STRUCTURAL]


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within ``points`` (the ends of every objective: inf)."""
    n, distance = len(points), np.zeros(len(points))
    if n <= 2:
        return np.full(n, np.inf)
    for column in points.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        distance[order[[0, -1]]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance


def ranking(points: np.ndarray) -> list[int]:
    """Indices of ``points`` (rows, every column maximised) best first: non-dominated rank, crowding, index."""
    ranks = moocore.pareto_rank(points, maximise=True)
    crowd = np.zeros(len(points))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowd[members] = crowding(points[members])
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def _by_rank(points: np.ndarray, own: int, cut: int) -> bool:
    """Non-dominated, or among the best ``cut`` by :func:`ranking`."""
    if moocore.is_nondominated(points, maximise=True, keep_weakly=True)[own]:
        return True
    return ranking(points).index(own) < cut


def contributions(points: np.ndarray) -> np.ndarray:
    """Each point's exclusive share of the hypervolume of ``points`` (rows, every column maximised), above
    a reference just below the worst value of each column (1 % of its span, or 1e-9): 0 for a dominated
    point, positive for every other."""
    low, high = points.min(axis=0), points.max(axis=0)
    reference = low - np.maximum(0.01 * (high - low), 1e-9)
    return moocore.hv_contributions(points, ref=reference, maximise=True)


def _by_hypervolume(points: np.ndarray, own: int, cut: int) -> bool:
    """Among the ``cut`` largest shares of the hypervolume, and a positive share (never a dominated plan)."""
    shares = contributions(points)
    if shares[own] <= 0:
        return False
    order = sorted(range(len(points)), key=lambda i: (-shares[i], i))
    return order.index(own) < cut


PROMOTIONS: dict[str, Callable[[np.ndarray, int, int], bool]] = {"rank": _by_rank, "hypervolume": _by_hypervolume}


def goes_on(number: int, judged: Mapping[int, Sequence[float]], directions: Sequence[str], reduction: int,
            promote: str = "rank") -> bool:
    """Whether trial ``number`` goes on from one rung where ``n`` trials were ``judged`` (``{trial number:
    objective values}``, ``number`` among them): by ``promote`` (:data:`PROMOTIONS`) with a cut of
    ``ceil(n / reduction)``; the first trial at a rung always goes on."""
    numbers = sorted(judged)
    if len(numbers) == 1:
        return True
    signs = np.array([1.0 if d == MAXIMIZE else -1.0 for d in directions])
    points = np.array([judged[n] for n in numbers], dtype=float).reshape(len(numbers), len(signs)) * signs
    return PROMOTIONS[promote](points, numbers.index(number), math.ceil(len(numbers) / reduction))


class RungGate:
    """Judges one trial at its rungs through the study's storage (from any process that can open it)."""

    def __init__(self, study: optuna.Study, number: int, directions: Sequence[str], reduction: int,
                 promote: str = "rank"):
        self.study, self.number = study, number
        self.directions, self.reduction, self.promote = list(directions), reduction, promote
        self.trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        self.recorded: dict[str, list[float]] = {}

    @classmethod
    def of(cls, study: optuna.Study, number: int, config: "SearchConfig", problem: "Problem") -> "RungGate | None":
        """The gate of trial ``number``, or None when the config has no rungs."""
        if config.rungs is None:
            return None
        return cls(study, number, [o.direction for o in judged_objectives(config, problem)], config.rungs.reduction,
                   config.rungs.promote)

    def __call__(self, epochs: int, values: Sequence[float]) -> bool:
        """Record ``values`` at the rung of ``epochs``; True when the trial goes on."""
        key = str(epochs)
        self.recorded[key] = [float(v) for v in values]
        self.study._storage.set_trial_user_attr(self.trial_id, RUNGS, dict(self.recorded))
        judged = {t.number: t.user_attrs[RUNGS][key] for t in self.study.get_trials(deepcopy=False, states=JUDGED)
                  if key in t.user_attrs.get(RUNGS, {})}
        judged[self.number] = self.recorded[key]
        return goes_on(self.number, judged, self.directions, self.reduction, self.promote)
