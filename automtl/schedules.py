"""Learning-rate schedules of a training recipe: the factor on the learning rate after each optimiser step.

A schedule is stepped every batch and spans the whole run; an optional linear
warm-up comes first and the schedule covers the steps after it. Every trial of
a batch (:mod:`automtl.stacked`) shares one step count, so a member follows
the curve it follows alone.

Example:
    >>> from automtl.schedules import factor
    >>> cosine = factor("cosine", total_steps=10)
    >>> cosine(0), round(cosine(5), 3), cosine(10)
    (1.0, 0.5, 0.0)
    >>> warm = factor("constant", total_steps=10, warmup_steps=4)
    >>> [warm(step) for step in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
"""

from __future__ import annotations

import math
from typing import Callable

Factor = Callable[[int], float]


def _cosine_between(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def constant(total: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> Factor:
    """The learning rate as given."""
    return lambda step: 1.0


def cosine(total: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> Factor:
    """A cosine from 1 to 0 over the run (SGDR without restarts)."""
    return lambda step: _cosine_between(1.0, 0.0, step / total)


def step(total: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> Factor:
    """Multiplied by ``gamma`` every ``step_epochs`` epochs (``torch.optim.lr_scheduler.StepLR``)."""
    return lambda done: gamma ** (done // (step_epochs * steps_per_epoch))


ONECYCLE_RISE, ONECYCLE_START, ONECYCLE_END = 0.3, 1 / 25, 1 / 25 / 1e4


def onecycle(total: int, steps_per_epoch: int, step_epochs: int, gamma: float) -> Factor:
    """Smith's one-cycle policy with ``torch.optim.lr_scheduler.OneCycleLR``'s defaults: a cosine rise from
    1/25 to 1 over the first 30 % of the steps, then a cosine fall to 1/25/1e4 at the last step (momentum
    is not cycled)."""
    peak = max(1, round(ONECYCLE_RISE * total) - 1)

    def factor(done: int) -> float:
        if done <= peak:
            return _cosine_between(ONECYCLE_START, 1.0, done / peak)
        return _cosine_between(1.0, ONECYCLE_END, (done - peak) / max(1, total - 1 - peak))
    return factor


SCHEDULES: dict[str, Callable[[int, int, int, float], Factor]] = {
    "constant": constant, "cosine": cosine, "step": step, "onecycle": onecycle}
WARMS_UP_ITSELF = ("onecycle",)


def factor(name: str, total_steps: int, steps_per_epoch: int = 1, warmup_steps: int = 0, step_epochs: int = 1,
           gamma: float = 0.1) -> Factor:
    """The factor after ``step`` optimiser steps: a linear warm-up to 1 over ``warmup_steps`` (the first
    step at ``1 / warmup_steps``), then schedule ``name`` over the remaining steps."""
    main = SCHEDULES[name](max(1, total_steps - warmup_steps), steps_per_epoch, step_epochs, gamma)
    if not warmup_steps:
        return main
    return lambda done: (done + 1) / warmup_steps if done < warmup_steps else main(done - warmup_steps)
