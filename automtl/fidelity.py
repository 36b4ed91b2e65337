"""How long a trial's full fine-tune is when ``fine_tune.epochs`` is ``auto``.

The rule, for any problem: the search's compute budget (``timeout`` seconds
times ``workers``, the trials computed at once) must hold
:data:`FULL_FINE_TUNES` full fine-tunes, each costing ``epochs`` times the
measured seconds of one fine-tune epoch (a few batches of the dense model timed
in the process that starts the search, with a worker's threads). The full
fine-tune is the most whole epochs that fit, at least one and at most
:data:`MAX_EPOCHS`; it moves by one epoch when the measured cost moves by a few
per cent, never by a whole rung. So a cheap model fine-tunes long and an
expensive one briefly, and every search gets about as many trials to the full
fine-tune. The choice is written into the run directory's config and onto the
study (``fidelity``), so every worker, ``--resume`` and export use it.

Example:
    >>> full_epochs(epoch_seconds=0.2, budget_seconds=200)
    33
    >>> full_epochs(epoch_seconds=2.5, budget_seconds=200)
    2
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, replace

import optuna
import torch
from torch import nn

from automtl.config import SearchConfig
from automtl.problems import Problem
from automtl.records import StudyRecord
from automtl.train import TrainConfig, batches_per_epoch, fit

log = logging.getLogger(__name__)

FULL_FINE_TUNES = 30  # the fixed plans (seeded front, enqueued) and as many again for the sampler
MAX_EPOCHS = 81
TIMED_BATCHES, TIMED_PASSES = 4, 4  # timed on passes over this many batches; the first pass warms up


@dataclass(frozen=True)
class Fidelity:
    """A full fine-tune chosen by the rule: its ``epochs`` and what they were chosen from."""

    epochs: int
    epoch_seconds: float
    budget_seconds: float
    threads: int


def full_epochs(epoch_seconds: float, budget_seconds: float) -> int:
    """The rule's full fine-tune (module docstring)."""
    affordable = budget_seconds / (FULL_FINE_TUNES * max(epoch_seconds, 1e-9))
    return int(max(1, min(affordable, MAX_EPOCHS)))


def seconds_per_batch(model: nn.Module, problem: Problem, recipe: TrainConfig, seed: int) -> float:
    """One fine-tune batch of ``model`` (a copy is trained): the fastest of ``TIMED_PASSES - 1`` passes over
    ``TIMED_BATCHES`` batches after a warm-up pass (allocations, kernel choice)."""
    few = replace(problem, train=problem.train.sample(recipe.batch_size * TIMED_BATCHES))
    ends: list[float] = []
    fit(copy.deepcopy(model), few, replace(recipe, epochs=TIMED_PASSES), seed,
        after_epoch=lambda _: ends.append(time.perf_counter()) or True)
    return min(b - a for a, b in zip(ends, ends[1:])) / TIMED_BATCHES


def epoch_recipe(config: SearchConfig) -> TrainConfig:
    """The config's fine-tune for one epoch (what is timed; ``epochs`` may still be ``auto``)."""
    return config.fine_tune.model_copy(update={"epochs": 1}).recipe()


def budget_seconds(config: SearchConfig) -> float:
    """The compute the rule shares out: ``timeout`` x ``workers``."""
    return config.timeout * config.workers


def measure(config: SearchConfig, problem: Problem, dense: nn.Module, threads: int) -> Fidelity:
    """Time one fine-tune epoch of ``dense`` on ``threads`` threads and apply the rule."""
    recipe = epoch_recipe(config)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        epoch = seconds_per_batch(dense, problem, recipe, config.seed) * batches_per_epoch(problem, recipe)
    finally:
        torch.set_num_threads(previous)
    budget = budget_seconds(config)
    return Fidelity(full_epochs(epoch, budget), epoch, budget, threads)


def resolve(config: SearchConfig, study: optuna.Study, problem: Problem, dense: nn.Module, threads: int
            ) -> SearchConfig:
    """``config`` with ``fine_tune.epochs: auto`` replaced by the rule's choice (recorded on ``study``), and
    rungs dropped when the choice leaves no epoch to judge a trial at before its end; unchanged otherwise."""
    if config.fine_tune.epochs != "auto":
        return config
    chosen = measure(config, problem, dense, threads)
    StudyRecord.write(study, fidelity=asdict(chosen))
    log.info("full fine-tune: %d epochs (one epoch measured %.2f s on %d threads; budget %.0f s)",
             chosen.epochs, chosen.epoch_seconds, threads, chosen.budget_seconds)
    return with_epochs(config, chosen.epochs)


def with_epochs(config: SearchConfig, epochs: int) -> SearchConfig:
    """``config`` with a full fine-tune of ``epochs``, its rungs dropped when none is left before the end."""
    rungs = config.rungs if config.rungs and config.rungs.min_epochs < epochs else None
    return config.model_copy(update={"fine_tune": config.fine_tune.model_copy(update={"epochs": epochs}),
                                     "rungs": rungs})
