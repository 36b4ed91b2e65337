"""The samplers a search may use: a registry of Optuna samplers selected by ``sampler.name``.

Each entry builds the sampler from the config's ``sampler`` section and a seed; add one by adding a line here.
"""

from __future__ import annotations

from typing import Callable, Protocol

import optuna


class SamplerSettings(Protocol):
    """The config's ``sampler`` section (:class:`automtl.config.SamplerConfig`)."""

    name: str
    startup_trials: int
    population_size: int


SAMPLERS: dict[str, Callable[[SamplerSettings, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda c, seed: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=True,
        n_startup_trials=c.startup_trials,
    ),
    "nsga2": lambda c, seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=c.population_size),
    "nsga3": lambda c, seed: optuna.samplers.NSGAIIISampler(seed=seed, population_size=c.population_size),
    "gp": lambda c, seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=c.startup_trials),
    "random": lambda c, seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(settings: SamplerSettings, seed: int, worker: int, salt: int) -> optuna.samplers.BaseSampler:
    """The sampler ``settings`` name, seeded from the search's ``seed``, per worker and per (re)start so no two
    draw the same stream."""
    return SAMPLERS[settings.name](settings, seed * 1_000_003 + worker * 7919 + salt)
