"""The climbing seeded front: global magnitude's sparsest level that keeps the floors, found while searching.

``seed_front`` guesses, before the problem is seen, how far global magnitude
can go. With ``focus: {min_relative: r, climb: true}``, each time a queued
global-magnitude level completes or is stopped, the levels known so far
decide the next:

* while none has missed a focus floor, the level above the sparsest, with
  half of its remaining weights removed, is queued (0.98 -> 0.99 -> 0.995
  ...), up to the top of the strategy's threshold range and while at least
  one of the model's weights would remain;
* once one missed (complete, or stopped at a rung or the ceiling: its focus
  constraints, as the samplers see them), the level midway (in remaining
  weights) between the least sparse miss and the sparsest level below it that
  kept the floors is queued, until they are within ``RESOLUTION`` of each
  other.

A level still waiting or running between them decides first. The levels
queued so far are stored on the study (``climbed``) for ``automtl status``;
the search reads the levels themselves from the trials, so a resumed search
goes on where it stopped. On a model that prunes further than the guess, the
front so reaches the sparsities a sampler needs many trials to find, and on
one that prunes less far it gets points just inside the floors;
:mod:`automtl.ceiling` is the other half (no fine-tune past a level that
missed).

Example:
    >>> next_level({0.5: True, 0.9: True}, total_parameters=10_000, high=1.0)
    0.95
    >>> next_level({0.8: True, 0.9: False}, total_parameters=10_000, high=1.0)
    0.858578643763
    >>> next_level({0.8: True, 0.85: None, 0.9: False}, total_parameters=10_000, high=1.0) is None
    True
"""

from __future__ import annotations

import logging
import math
from typing import Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl import space, study_storage
from automtl.config.schema import SEED_STRATEGY, SearchConfig
from automtl.records import StudyRecord
from automtl.rundir import RunDir

log = logging.getLogger(__name__)

DECIDED = (TrialState.COMPLETE, TrialState.PRUNED)
RESOLUTION = 1.25  # stop narrowing once the kept level leaves at most 1.25x the weights the missed one does


def next_level(levels: Mapping[float, bool | None], total_parameters: int, high: float) -> float | None:
    """The next global-magnitude share to run, given ``levels`` (share -> kept every floor, missed one, or None
    while waiting or running), or None: nothing kept yet, a pending level decides first, or the end is reached.
    As for the ceiling, the least sparse miss counts, even below a level that kept the floors."""
    high_miss = min((share for share, inside in levels.items() if inside is False), default=None)
    kept = [share for share, inside in levels.items() if inside and (high_miss is None or share < high_miss)]
    if not kept:
        return None
    low = max(kept)
    if any(inside is None and share > low and (high_miss is None or share < high_miss)
           for share, inside in levels.items()):
        return None
    if high_miss is None:
        level = round(1 - (1 - low) / 2, 12)
        within = (1 - level) * total_parameters >= 1 and level <= high
    else:
        level = round(1 - math.sqrt((1 - low) * (1 - high_miss)), 12)
        within = (1 - low) / (1 - high_miss) >= RESOLUTION
    return level if within and not any(math.isclose(level, share) for share in levels) else None


def _share(trial: FrozenTrial, config: SearchConfig, task_names: list[str]) -> float | None:
    """The share of a queued plan of global magnitude alone, else None (a sampled plan, another queued plan, or
    fixed parameters this config does not read)."""
    if not study_storage.was_queued(trial):
        return None
    try:
        plan = space.plan_from_params(trial.system_attrs["fixed_params"], config, task_names)
    except ValueError:
        return None
    return plan.thresholds[SEED_STRATEGY] if plan.order == [SEED_STRATEGY] else None


def levels(study: optuna.Study, config: SearchConfig, task_names: list[str]) -> dict[float, bool | None]:
    """The queued plans of global magnitude alone: share -> whether they meet every focus floor (their focus
    constraints, as the samplers see them: complete, or stopped at a rung or the ceiling), or None (waiting or
    running)."""
    found: dict[float, bool | None] = {}
    for trial in study.get_trials(deepcopy=False, states=(*DECIDED, TrialState.WAITING, TrialState.RUNNING)):
        share = _share(trial, config, task_names)
        if share is None:
            continue
        if trial.state in DECIDED:
            found[share] = found.get(share) is not False and all(v <= 0 for v in trial.constraints.values())
        else:
            found.setdefault(share, None)
    return found


def climb(run: RunDir, study: optuna.Study, finished: FrozenTrial, config: SearchConfig) -> float | None:
    """Queue the next level when ``finished`` is a queued global-magnitude level that completed or was stopped;
    returns the level queued, or None. Reading the levels and queueing the next hold the run's ask lock, so two
    workers telling at once do not queue one level twice."""
    if not (config.focus and config.focus.climb and finished.state in DECIDED):
        return None
    record = StudyRecord.of(study)
    share = _share(finished, config, record.tasks)
    if share is None:
        return None
    with run.asking():
        level = next_level(levels(study, config, record.tasks), record.total_parameters,
                           config.pruning.strategies[SEED_STRATEGY].high)
        if level is None:
            return None
        StudyRecord.write(study, climbed=[*StudyRecord.of(study).climbed, level])
        space.enqueue(study, config.seed_plan(level), config, record.tasks)
    log.info("global magnitude at %g done (trial %d): queued the level %g", share, finished.number, level)
    return level
