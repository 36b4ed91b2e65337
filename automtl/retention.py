"""Weights retention (``keep_weights``): a trial's pruned weights stay on disk while it may be exported.

With ``front`` (the default) a completed trial's weights file is deleted once another completed trial
dominates it (:func:`automtl.pareto.front`, which export's picks choose from). Trials are never removed, so a
dominated trial stays dominated: a trial that may still be picked is never touched, and a kill at any moment
leaves every front trial's weights in place. Deleting waits for no one: while an export holds the directory's
weights lock (:meth:`automtl.rundir.RunDir.weights_lock`) it is skipped and done after a later trial. With
``all`` every completed trial keeps its weights, so any of them can be exported by number.
"""

from __future__ import annotations

import optuna

from automtl import pareto
from automtl.records import TrialRecord
from automtl.rundir import TRIALS, RunDir


def release_dominated(run: RunDir, study: optuna.Study, keep: str) -> int:
    """Under ``keep == "front"``, delete the weights of the completed trials off the front; returns how many
    files went."""
    if keep != "front":
        return 0
    on_front = {t.number for t in pareto.front(study)}
    deleted = 0
    with run.weights_lock(shared=False, wait=False) as held:
        if not held:
            return 0
        for trial in pareto.completed(study):
            path = run.path / TrialRecord.from_trial(trial).result.weights
            if trial.number not in on_front and path.exists():
                path.unlink(missing_ok=True)
                deleted += 1
    return deleted


def disk_use(run: RunDir) -> dict[str, int]:
    """Bytes the run directory takes, and of them the trials' weights, with their count."""
    files = [p for p in run.path.rglob("*") if p.is_file()]
    weights = [p for p in files if p.parent == run.path / TRIALS]
    return {"bytes": sum(p.stat().st_size for p in files), "weights_bytes": sum(p.stat().st_size for p in weights),
            "weights_files": len(weights)}
