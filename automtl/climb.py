"""The climbing seeded front: further levels of global magnitude while the sparsest one still keeps the floors.

``seed_front`` guesses, before the problem is seen, how far global magnitude
can go. With ``focus: {min_relative: r, climb: true}``, when the front's
sparsest level completes with validation metrics meeting every focus floor,
and no queued global-magnitude plan has missed one, the next level is
queued: the same plan with half of the remaining weights removed (0.98 ->
0.99 -> 0.995 ...). The climb stops at the first level that misses a floor,
at the top of the strategy's threshold range, or where less than one of the
model's weights would remain. The levels queued so far are stored on the
study (``climbed``), so a resumed search climbs on from them. On a model that
prunes further than the guess, the front so reaches the sparsities a sampler
needs many trials to find; :mod:`automtl.ceiling` is the other half (no
fine-tune past a level that missed).

Example:
    >>> next_level(0.98, total_parameters=10_000)
    0.99
    >>> next_level(0.9999, total_parameters=10_000) is None
    True
"""

from __future__ import annotations

import logging
import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from automtl import space, study_storage
from automtl.ceiling import Ceiling
from automtl.config.schema import SEED_STRATEGY, SearchConfig
from automtl.records import StudyRecord, TrialRecord

log = logging.getLogger(__name__)


def next_level(share: float, total_parameters: int) -> float | None:
    """The level above ``share`` (half the remaining weights removed), or None once less than one of
    ``total_parameters`` would remain."""
    level = round(1 - (1 - share) / 2, 12)
    return level if (1 - level) * total_parameters >= 1 else None


def climb(study: optuna.Study, finished: FrozenTrial, config: SearchConfig) -> float | None:
    """Queue the next level when ``finished`` is the seeded front's sparsest level so far and kept every floor;
    returns the level queued, or None."""
    if not (config.focus and config.focus.climb and finished.state == TrialState.COMPLETE
            and study_storage.was_queued(finished)):
        return None
    plan, record = TrialRecord.from_trial(finished), StudyRecord.of(study)
    share = plan.thresholds.get(SEED_STRATEGY)
    if plan.order != [SEED_STRATEGY] or not math.isclose(share, max([*config.seed_front, *record.climbed])):
        return None
    if Ceiling(study).reference() is not None:  # this level, or a lower one, missed a floor
        return None
    level = next_level(share, record.total_parameters)
    if level is None or level > config.pruning.strategies[SEED_STRATEGY].high:
        return None
    StudyRecord.write(study, climbed=[*record.climbed, level])
    space.enqueue(study, config.seed_plan(level), config, record.tasks)
    log.info("global magnitude at %g kept every focus floor (trial %d): queued %g", share, finished.number, level)
    return level
