"""Optimisers of a training recipe, one module each, selected by name.

An optimiser builder takes parameter groups (each with its own ``lr``) and the
recipe's :class:`OptimizerSettings`, and returns a ``torch.optim`` optimiser.
Its state is per parameter, so a trial batch (:mod:`automtl.stacked`), which
gives every member its own groups, steps each member as it would step alone.

Example:
    >>> import torch
    >>> from automtl.optimizers import OptimizerSettings, make_optimizer
    >>> layer = torch.nn.Linear(2, 2)
    >>> sgd = make_optimizer([{"params": layer.parameters(), "lr": 0.1}], OptimizerSettings("sgd", momentum=0.9))
    >>> type(sgd).__name__, sgd.param_groups[0]["momentum"]
    ('SGD', 0.9)
"""

from __future__ import annotations

from typing import Callable

import torch

from automtl.errors import UserError
from automtl.optimizers.adam import adam
from automtl.optimizers.adamw import adamw
from automtl.optimizers.base import OptimizerSettings, fused
from automtl.optimizers.sgd import sgd

Builder = Callable[[list[dict], OptimizerSettings], torch.optim.Optimizer]
OPTIMIZERS: dict[str, Builder] = {"adam": adam, "adamw": adamw, "sgd": sgd}


def make_optimizer(groups: list[dict], settings: OptimizerSettings) -> torch.optim.Optimizer:
    """The optimiser ``settings.name`` over parameter ``groups`` (each with its ``lr``)."""
    if settings.name not in OPTIMIZERS:
        raise UserError(f"optimizer {settings.name!r} is unknown; allowed: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[settings.name]([{**g, "params": list(g["params"])} for g in groups], settings)


__all__ = ["OPTIMIZERS", "OptimizerSettings", "fused", "make_optimizer"]
