"""What every backend shares: the trial budget and its split, recording plans, telling a finished trial,
the interrupted-trial bookkeeping, progress."""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl import focus, progress, retention, space, study_storage
from automtl.climb import climb
from automtl.config import SearchConfig
from automtl.records import CEILING, COMPUTE_SECONDS, STOPPED_AT, TrialRecord, TrialResult, failure_attrs
from automtl.rundir import RunDir
from automtl.rungs import TrialStopped

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
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in keep]
    for t in stale:
        for key, value in failure_attrs(INTERRUPTED).items():
            study_storage.set_attr(study, t.number, key, value)
        study_storage.fail(study, t.number)
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


def trials_to_ask(study: optuna.Study, config: SearchConfig, deadline: float | None, batch: int, slots: int) -> int:
    """How many trials one of ``slots`` (workers, or Ray trial slots) asks for now, at most ``batch``: none
    once the budget or the ``deadline`` is spent; near the end of the budget at most the slot's share of
    what is left, so none idles while another runs a full batch."""
    left = config.trials - budget_used(study)
    if left <= 0 or (deadline is not None and time.time() >= deadline):
        return 0
    return min(batch, math.ceil(left / slots))


def failure(exc: BaseException) -> str:
    """How a trial's failure is recorded: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


def tell(run: RunDir, study: optuna.Study, trial: optuna.Trial, outcome: TrialResult | TrialStopped | str,
         config: SearchConfig, worker: str | None = None) -> FrozenTrial:
    """Record how ``trial`` ended and tell the study, alike from every backend: complete (then the weights of
    the trials it dominates may go, :func:`automtl.retention.release_dominated`), stopped at a rung (told
    PRUNED, with where and at what cost) or failed (``outcome`` is the reason; told FAIL). A complete or
    stopped trial also gets its focus constraints (Optuna keeps the objective values when told), and may queue
    the next global-magnitude level (:func:`automtl.climb.climb`)."""
    if worker is not None:
        trial.set_user_attr("worker", worker)
    if isinstance(outcome, TrialStopped):
        trial.set_user_attr(STOPPED_AT, outcome.epochs)
        trial.set_user_attr(COMPUTE_SECONDS, outcome.seconds)
        if outcome.ceiling is not None:
            trial.set_user_attr(CEILING, outcome.ceiling)
        _constrain(trial, outcome.metrics, study.user_attrs)
        finished = study.tell(trial, state=TrialState.PRUNED)
        climb(run, study, finished, config)
        return finished
    if isinstance(outcome, str):
        record_failure(trial, outcome)
        if outcome != INTERRUPTED:
            log.warning("trial %d failed: %s", trial.number, outcome)
        return study.tell(trial, state=TrialState.FAIL)
    for key, value in outcome.to_attrs().items():
        trial.set_user_attr(key, value)
    _constrain(trial, outcome.metrics, study.user_attrs)
    finished = study.tell(trial, outcome.values)
    retention.release_dominated(run, study, config.keep_weights)
    climb(run, study, finished, config)
    return finished


def _constrain(trial: optuna.Trial, metrics: Mapping[str, float], study_attrs: Mapping[str, Any]) -> None:
    """Optuna constraints from the study's focus region (TPE, NSGA-II/III and GP prefer feasible trials)."""
    for key, value in focus.constraints(study_attrs, metrics).items():
        trial.set_constraint(key, value)


def record_failure(trial: optuna.Trial, reason: str) -> None:
    """Store why the trial failed (tell Optuna the FAIL state afterwards)."""
    for key, value in failure_attrs(reason).items():
        trial.set_user_attr(key, value)


@contextmanager
def reporting(run: RunDir, config: SearchConfig, on_progress: Callable[[progress.Snapshot], None] | None
              ) -> Iterator[None]:
    """While the block runs, call ``on_progress`` with a study snapshot every second (and once at the end),
    its budget the config's ``trials`` and ``timeout``."""
    if on_progress is None:
        yield
        return
    started, stop = time.time(), threading.Event()

    def monitor():
        study = run.load_study()
        while not stop.wait(1.0):
            on_progress(progress.take(study, config.trials, started, config.timeout))
        on_progress(progress.take(study, config.trials, started, config.timeout))

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
