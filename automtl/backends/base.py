"""What every backend shares: samplers, the trial budget, recording plans and results, progress."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import optuna
from optuna.trial import TrialState

from automtl import focus, progress, space
from automtl.records import COMPUTE_SECONDS, STOPPED_AT, TrialRecord, TrialResult, failure_attrs
from automtl.rundir import RunDir

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted"

def budget_used(study: optuna.Study) -> int:
    """Trials that count against the budget: started ones, except those failed as interrupted
    (enqueued trials still waiting do not count until they start)."""
    return sum(
        1 for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
        and not (t.state == TrialState.FAIL and TrialRecord.from_trial(t).fail_reason == INTERRUPTED)
    )


def mark_interrupted(study: optuna.Study, keep: set[int] = frozenset()) -> int:
    """Mark every RUNNING trial (except numbers in ``keep``) failed as interrupted.

    Call only while holding the run-dir lock, when no other process runs those trials."""
    storage = study._storage
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in keep]
    for t in stale:
        for key, value in failure_attrs(INTERRUPTED).items():
            storage.set_trial_user_attr(t._trial_id, key, value)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


def recover(study: optuna.Study) -> None:
    """Mark the trials an earlier (killed) process left running as interrupted, and say so."""
    stale = mark_interrupted(study)
    if stale:
        log.warning("marked %d trial(s) left running by an earlier process as failed (interrupted)", stale)


def record_plan(trial: optuna.Trial, plan: space.TrialPlan, worker: Any) -> None:
    """Store the decoded plan (and who runs it) on the trial."""
    for key, value in TrialRecord(trial.number, "running", worker=worker, **plan.as_dict()).to_attrs().items():
        trial.set_user_attr(key, value)


def record_result(trial: optuna.Trial, result: TrialResult, study_attrs: Mapping[str, Any]) -> None:
    """Store a finished trial's result on it, and its focus constraints (Optuna keeps the objective values
    when told)."""
    for key, value in result.to_attrs().items():
        trial.set_user_attr(key, value)
    _constrain(trial, result.metrics, study_attrs)


def record_stop(trial: optuna.Trial, epochs: int, metrics: Mapping[str, float], seconds: float,
                study_attrs: Mapping[str, Any]) -> None:
    """Store where a rung stopped the trial, what it cost, and its focus constraints there (tell Optuna
    PRUNED afterwards)."""
    trial.set_user_attr(STOPPED_AT, epochs)
    trial.set_user_attr(COMPUTE_SECONDS, seconds)
    _constrain(trial, metrics, study_attrs)


def _constrain(trial: optuna.Trial, metrics: Mapping[str, float], study_attrs: Mapping[str, Any]) -> None:
    """Optuna constraints from the study's focus region (TPE, NSGA-II/III and GP prefer feasible trials)."""
    for key, value in focus.constraints(study_attrs, metrics).items():
        trial.set_constraint(key, value)


def record_failure(trial: optuna.Trial, reason: str) -> None:
    """Store why the trial failed (tell Optuna the FAIL state afterwards)."""
    for key, value in failure_attrs(reason).items():
        trial.set_user_attr(key, value)


@contextmanager
def reporting(run: RunDir, budget: int, on_progress: Callable[[progress.Snapshot], None] | None) -> Iterator[None]:
    """While the block runs, call ``on_progress`` with a study snapshot every second (and once at the end)."""
    if on_progress is None:
        yield
        return
    started, stop = time.time(), threading.Event()

    def monitor():
        study = run.load_study()
        while not stop.wait(1.0):
            on_progress(progress.take(study, budget, started))
        on_progress(progress.take(study, budget, started))

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
