"""The sparsity ceiling: no fine-tune past the sparsity at which global magnitude alone fell below the floors.

The queue (``seed_front``, then ``enqueue``) is a guess made before the
problem is seen; the seeded front corrects it. With ``focus: {min_relative:
r, ceiling: true}``, every complete queued plan of global magnitude alone
(fixed task weights and learning rate, so the levels differ by sparsity
alone) whose validation metrics miss a focus floor sets a ceiling; the lowest
of them counts. A later queued plan whose pruned model is at least that
sparse is stopped before its fine-tune: told ``PRUNED`` after 0 epochs, with
the ceiling's trial recorded on it (``ceiling``) and that trial's metrics as
its focus constraints (it is taken to miss the floors at least as much), so
TPE learns from it as from a plan that ran. On a model whose accuracy falls
off early, the higher seed levels and the enqueued families past that point
cost one pruning pass instead of a fine-tune. Sampled plans are never
stopped by it: their learning rate and task weights differ, and the
constraints already steer the samplers.

Example:
    >>> from automtl.objectives import Objective
    >>> accuracy = [Objective("accuracy.left", "maximize", task="left")]
    >>> seeds = [(0.8, 3, {"left": 0.9}), (0.95, 7, {"left": 0.5}), (0.9, 5, {"left": 0.7})]
    >>> lowest_miss(seeds, {"left": 0.8}, accuracy)
    (0.9, 5, {'left': 0.7})
"""

from __future__ import annotations

from typing import Iterable, Mapping

import optuna
from optuna.trial import TrialState

from automtl import focus, study_storage
from automtl.config.schema import SEED_STRATEGY, SearchConfig
from automtl.objectives import Objective, of_attrs as objectives_of
from automtl.records import TrialRecord

Reference = tuple[float, int, dict[str, float]]  # (sparsity, trial number, validation metrics)


def lowest_miss(references: Iterable[Reference], floor: Mapping[str, float], objectives: list[Objective]
                ) -> Reference | None:
    """The least sparse of ``references`` whose metrics miss a ``floor``, or None."""
    return min((r for r in references if not focus.contains(floor, objectives, r[2])), default=None)


class Ceiling:
    """The ceiling of a running search, read from its ``study`` when a queued trial is pruned."""

    def __init__(self, study: optuna.Study):
        self.study = study

    @classmethod
    def of(cls, study: optuna.Study, number: int, config: SearchConfig) -> "Ceiling | None":
        """The ceiling trial ``number`` is held to, or None: the config asks for none, or the plan was sampled."""
        wanted = config.focus and config.focus.ceiling
        return cls(study) if wanted and study_storage.was_queued(study_storage.frozen(study, number)) else None

    def reference(self) -> Reference | None:
        """The lowest-sparsity complete queued global-magnitude plan below a floor, read from the storage."""
        attrs = self.study.user_attrs
        seeds = [TrialRecord.from_trial(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if study_storage.was_queued(t)]
        return lowest_miss([(r.result.sparsity, r.number, r.result.metrics) for r in seeds
                            if r.complete and r.order == [SEED_STRATEGY]], focus.of_attrs(attrs), objectives_of(attrs))

    def reached(self, sparsity: float) -> Reference | None:
        """The reference a pruned model this ``sparsity`` reaches (it is then not fine-tuned), or None."""
        reference = self.reference()
        return reference if reference is not None and sparsity >= reference[0] else None
