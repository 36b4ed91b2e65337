"""A snapshot of a study's state: counts by state, front size, hypervolume, timing, ETA."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import optuna
from optuna.trial import TrialState

from automtl import focus, pareto
from automtl.objectives import of_study
from automtl.records import StudyRecord, records

STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.RUNNING: "running",
    TrialState.FAIL: "failed",
    TrialState.WAITING: "waiting",
    TrialState.PRUNED: "stopped_early",
}


@dataclass
class Snapshot:
    counts: dict[str, int]
    budget: int
    front_size: int
    hypervolume: float
    compute_seconds: float
    elapsed_seconds: float
    eta_seconds: float | None
    failures: dict[str, list[int]]  # reason -> numbers of the trials that failed with it
    focus: dict[str, float]  # the focus region's floor per task (empty: none)
    in_focus: int  # complete trials meeting every floor
    front_in_focus: int  # of them, on the front
    focus_hypervolume: float  # the front's hypervolume inside the focus region (task nadirs at the floors)
    past_ceiling: list[int] = field(default_factory=list)  # trials stopped before their fine-tune (automtl.ceiling)
    climbed: list[float] = field(default_factory=list)  # global-magnitude levels queued by automtl.climb
    done: float = 0.0  # the share of the budget spent: of the trials, or of the timeout if that comes first

    @property
    def finished(self) -> int:
        return self.counts["complete"] + self.counts["stopped_early"] + self.counts["failed"]

    def as_dict(self) -> dict:
        return asdict(self)


def take(study: optuna.Study, budget: int, started: float | None = None, timeout: float | None = None) -> Snapshot:
    """Read the study now. ``elapsed`` is measured from ``started`` (default: the first trial's start); a
    search started then with a ``timeout`` ends by it at the latest, which ``eta_seconds`` and ``done`` count."""
    trials = study.get_trials(deepcopy=False)
    counts = {name: 0 for name in STATES.values()}
    for t in trials:
        counts[STATES[t.state]] += 1
    done = [t for t in trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    compute = sum(r.compute_seconds for r in records(done))
    if started is None:
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
        ends = [t.datetime_complete.timestamp() for t in done]
        elapsed = (max(ends) - min(starts)) if ends and starts else 0.0
    else:
        elapsed = time.time() - started
    complete = pareto.completed(study)
    front = pareto.front(study)
    declared, floors = of_study(study), focus.of_attrs(study.user_attrs)
    finished_now = counts["complete"] + counts["stopped_early"] + counts["failed"]
    remaining = max(0, budget - finished_now - counts["running"])
    eta = elapsed / finished_now * (remaining + counts["running"] / 2) if finished_now and started else None
    done = finished_now / budget if budget else 0.0
    if timeout and started:
        eta = min(eta if eta is not None else math.inf, max(0.0, timeout - elapsed))
        done = max(done, elapsed / timeout)
    failures: dict[str, list[int]] = {}
    for record in records([t for t in trials if t.state == TrialState.FAIL]):
        failures.setdefault(record.fail_reason or "unknown", []).append(record.number)
    return Snapshot(
        counts=counts,
        budget=budget,
        front_size=len(front),
        hypervolume=pareto.hypervolume(front, declared) if complete else 0.0,
        compute_seconds=compute,
        elapsed_seconds=elapsed,
        eta_seconds=eta,
        failures=failures,
        focus=floors,
        in_focus=sum(focus.contains(floors, declared, r.result.metrics) for r in records(complete)),
        front_in_focus=sum(focus.contains(floors, declared, r.result.metrics) for r in records(front)),
        focus_hypervolume=pareto.hypervolume(front, focus.bounded_by(floors, declared)) if floors else 0.0,
        past_ceiling=[r.number for r in records([t for t in trials if t.state == TrialState.PRUNED])
                      if r.ceiling is not None],
        climbed=StudyRecord.of(study).climbed,
        done=min(1.0, done),
    )
