"""The samplers a search may use: a registry of Optuna samplers selected by ``sampler.name``.

Each entry builds the sampler from the search config and a seed; add one by adding a line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import optuna

if TYPE_CHECKING:
    from automtl.config import SearchConfig

SAMPLERS: dict[str, Callable[["SearchConfig", int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c, seed: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=c.sampler.startup_trials,
    ),
    "nsga2": lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=c.sampler.population_size),
    "nsga3": lambda c, seed: optuna.samplers.NSGAIIISampler(seed=seed, population_size=c.sampler.population_size),
    "gp": lambda c, seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=c.sampler.startup_trials),
    "random": lambda c, seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(config: "SearchConfig", worker: int, salt: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded per worker and per (re)start so no two draw the same stream."""
    return SAMPLERS[config.sampler.name](config, config.seed * 1_000_003 + worker * 7919 + salt)
