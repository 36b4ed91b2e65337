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
That is ``promote: rank``; ``promote: hypervolume`` (:mod:`automtl.promotion`) instead lets on only the
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from automtl import objectives, study_storage
from automtl.metrics import MAXIMIZE
from automtl.promotion import PROMOTIONS
from automtl.records import RUNGS

if TYPE_CHECKING:
    from automtl.config import SearchConfig
    from automtl.problems import Problem

JUDGED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
Gate = Callable[[int, list[float]], bool]  # (epochs, judged objective values) -> whether the trial goes on


class TrialStopped(Exception):
    """A trial its rung stopped early (not failed: it ranked below the rung's cut): where, its judged values
    and validation metrics there, and its compute until then. Stopped at the sparsity ceiling
    (:mod:`automtl.ceiling`) before any epoch: ``ceiling`` is the trial that set it, ``metrics`` that trial's."""

    def __init__(self, epochs: int, values: list[float], metrics: dict[str, float], seconds: float = 0.0,
                 ceiling: int | None = None):
        super().__init__(f"stopped after {epochs} fine-tune epoch(s)" if ceiling is None else
                         f"stopped before its fine-tune: as sparse as trial {ceiling}, which missed a focus floor")
        self.epochs, self.values, self.metrics, self.seconds = epochs, values, metrics, seconds
        self.ceiling = ceiling


@dataclass(frozen=True)
class RungStop:
    """Where a judge stopped its trial, with the values and metrics it was judged on."""

    epochs: int
    values: list[float]
    metrics: dict[str, float]


class RungJudge:
    """Called after every fine-tune epoch of one trial: at a rung milestone it scores the trial (``score()``:
    its judged objective values and validation metrics) and asks the gate; ``stop`` says where it stopped."""

    def __init__(self, milestones: Sequence[int], gate: Gate,
                 score: Callable[[], tuple[list[float], dict[str, float]]]):
        self.milestones, self.gate, self.score = set(milestones), gate, score
        self.stop: RungStop | None = None

    def __call__(self, epochs: int) -> bool:
        if epochs not in self.milestones:
            return True
        values, metrics = self.score()
        if self.gate(epochs, values):
            return True
        self.stop = RungStop(epochs, values, metrics)
        return False


def judged_objectives(config: "SearchConfig", problem: "Problem") -> list[objectives.Objective]:
    """The objectives a rung compares: every declared one except those measured on the shrunk model
    (FLOPs and latency, which fine-tuning does not change)."""
    return [o for o in objectives.declared(config, problem) if o.name not in objectives.STRUCTURAL]


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
        self.recorded: dict[str, list[float]] = {}

    @classmethod
    def of(cls, study: optuna.Study, number: int, config: "SearchConfig", problem: "Problem") -> "RungGate | None":
        """The gate of trial ``number``, or None when the config has no rungs."""
        rungs = config.rungs
        if rungs is None:
            return None
        return cls(study, number, [o.direction for o in judged_objectives(config, problem)], rungs.reduction,
                   rungs.promote)

    def __call__(self, epochs: int, values: Sequence[float]) -> bool:
        """Record ``values`` at the rung of ``epochs``; True when the trial goes on."""
        key = str(epochs)
        self.recorded[key] = [float(v) for v in values]
        study_storage.set_attr(self.study, self.number, RUNGS, dict(self.recorded))
        judged = {t.number: t.user_attrs[RUNGS][key] for t in self.study.get_trials(deepcopy=False, states=JUDGED)
                  if key in t.user_attrs.get(RUNGS, {})}
        judged[self.number] = self.recorded[key]
        return goes_on(self.number, judged, self.directions, self.reduction, self.promote)
