"""What automtl does to an Optuna study that Optuna's public API does not offer, in one place.

Optuna writes to a trial only through the :class:`optuna.Trial` the process
asked for. automtl also needs to: record a running trial's rung values from the
process that runs it (a Ray worker holds no ``Trial``), mark trials a killed
process left running as failed, and rebind Tune's restored trials to their
Optuna trials. These go through the study's storage, reached by the private
``Study._storage`` and ``Study._study_id`` (stable through Optuna 3 and 4): if
Optuna changes them, this module is the one place to follow.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number``."""
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def set_attr(study: optuna.Study, number: int, key: str, value: Any) -> None:
    """Set a user attribute of trial ``number`` (running), from any process that opened the study."""
    study._storage.set_trial_user_attr(trial_id(study, number), key, value)


def fail(study: optuna.Study, number: int) -> None:
    """Mark trial ``number`` (left running) failed."""
    study._storage.set_trial_state_values(trial_id(study, number), TrialState.FAIL)


def is_finished(study: optuna.Study, number: int) -> bool:
    """Whether trial ``number`` has ended (complete, stopped early or failed), read from the storage."""
    return frozen(study, number).state.is_finished()


def trial(study: optuna.Study, number: int) -> optuna.Trial:
    """The :class:`optuna.Trial` of an existing, running trial ``number`` (to tell it from this process)."""
    return optuna.Trial(study, trial_id(study, number))


def was_queued(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` runs a plan put in the queue (``Study.enqueue_trial``: the seeded front, ``enqueue``),
    read from the system attribute Optuna keeps its fixed parameters in."""
    return "fixed_params" in trial.system_attrs


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` as the storage has it now."""
    return study._storage.get_trial(trial_id(study, number))
