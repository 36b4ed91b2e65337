"""What a search optimises: each objective's name, direction, bounds, and how it is shown.

Objectives, in the order trials report them:

* ``sparsity`` — maximised, in [0, 1];
* ``<metric_name>.<task>`` for every task (``accuracy.left``, ``mse.sum``) — in the
  task's direction, on the validation split;
* optionally ``nonzero_parameters`` (config ``parameters``), ``flops`` and
  ``latency_ms`` — minimised; FLOPs and latency are measured on the trial's
  model with its unused units removed.

**Bounds.** Every objective has an *ideal* and a *nadir* value and is
normalised as ``(value - nadir) / (ideal - nadir)`` clipped to [0, 1] (1 is
ideal, whatever the direction). Sparsity: 1 and 0. A task metric takes the
bounds its :class:`~automtl.metrics.Metric` declares (accuracy: 1 and 0; MSE,
MAE, RMSE: ideal 0); what is not declared is measured once, when the dense
model is ready: the ideal is the dense model's validation value, the nadir the
value of a *constant predictor* (the dense model's mean validation output for
every input), so a trial counts only where it beats ignoring the input. Costs:
ideal 0, nadir the dense model's value (its parameter count, FLOPs, latency).
The hypervolume (:mod:`automtl.pareto`) is taken in this normalised space with
the origin as reference; the bounds are stored on the study, so every view
normalises alike.

Example:
    >>> objective = Objective("mse.sum", "minimize", ideal=0.0, nadir=8.0)
    >>> float(objective.normalise(2.0)), objective.better(1.0, 2.0)
    (0.75, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from automtl.metrics import MAXIMIZE, MINIMIZE, Metric
from automtl.records import StudyRecord

if TYPE_CHECKING:
    import optuna

    from automtl.config import SearchConfig
    from automtl.problems import Problem, Task

COSTS = {"parameters": "nonzero_parameters", "flops": "flops", "latency_ms": "latency_ms"}  # config name -> objective
STRUCTURAL = ("flops", "latency_ms")  # measured on the shrunk model


@dataclass(frozen=True)
class Objective:
    """One objective: ``name``, ``direction``, normalisation bounds, and the task it scores (if any)."""

    name: str
    direction: str
    ideal: float | None = None
    nadir: float | None = None
    task: str | None = None
    fraction: bool = False  # a share in [0, 1], shown as a percentage

    @property
    def maximize(self) -> bool:
        return self.direction == MAXIMIZE

    @property
    def label(self) -> str:
        """How tables and plots name it: ``accuracy left``, ``mse sum``, ``flops``."""
        return self.name.replace(".", " ", 1) if self.task else self.name.replace("_", " ")

    def normalise(self, values):
        """Values mapped to [0, 1], 1 = ideal, 0 = nadir or worse (all 0 while the bounds are unknown)."""
        values = np.asarray(values, dtype=float)
        if self.ideal is None or self.nadir is None or self.ideal == self.nadir:
            return np.zeros_like(values)
        return np.clip((values - self.nadir) / (self.ideal - self.nadir), 0.0, 1.0)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def best(self, values):
        return max(values) if self.maximize else min(values)

    def format(self, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.1%}" if self.fraction else f"{value:.4g}"


def of_task(task: "Task") -> Objective:
    """A task's objective: its metric, direction, and the bounds the metric declares."""
    metric = task.metric if isinstance(task.metric, Metric) else None
    ideal, nadir = (metric.ideal, metric.nadir) if metric else (None, None)
    return Objective(task.objective, task.direction, ideal, nadir, task=task.name, fraction=(ideal, nadir) == (1.0, 0.0))


def declared(config: "SearchConfig", problem: "Problem") -> list[Objective]:
    """The objectives a config asks for, with the bounds known without measuring anything."""
    objectives = [Objective("sparsity", MAXIMIZE, 1.0, 0.0, fraction=True), *map(of_task, problem.tasks)]
    objectives += [Objective(COSTS[name], MINIMIZE, ideal=0.0) for name in config.objectives if name in COSTS]
    return objectives


def measured(objectives: list[Objective], dense_values: dict[str, float], constant: dict[str, float]
             ) -> list[Objective]:
    """Fill the bounds left open: costs' nadir and metrics' ideal from the dense model, metrics' nadir
    from the constant predictor (see the module docstring)."""
    def finite(value):
        return float(value) if value is not None and math.isfinite(value) else None

    filled = []
    for o in objectives:
        ideal = o.ideal if o.ideal is not None else finite(dense_values.get(o.name))
        nadir = o.nadir if o.nadir is not None else finite((constant if o.task else dense_values).get(o.name))
        filled.append(replace(o, ideal=ideal, nadir=nadir))
    return filled


def bounded(objectives: list[Objective]) -> bool:
    """Every objective's bounds are known."""
    return all(o.ideal is not None and o.nadir is not None for o in objectives)


def to_attrs(objectives: list[Objective]) -> list[dict]:
    return [asdict(o) for o in objectives]


def of_study(study: "optuna.Study") -> list[Objective]:
    """The study's objectives as stored (see :func:`of_attrs`)."""
    return of_attrs(study.user_attrs)


def of_attrs(attrs: Mapping[str, Any]) -> list[Objective]:
    """The objectives stored in a study's attributes; studies from before bounds were stored get the
    old fixed ones (accuracy in [0, 1], parameters against the dense count)."""
    record = StudyRecord.from_attrs(attrs)
    if record.objective_specs is not None:
        return [Objective(**spec) for spec in record.objective_specs]
    legacy = {"sparsity": Objective("sparsity", MAXIMIZE, 1.0, 0.0, fraction=True),
              "nonzero_parameters": Objective("nonzero_parameters", MINIMIZE, 0.0, float(record.total_parameters))}
    legacy |= {f"accuracy.{t}": Objective(f"accuracy.{t}", MAXIMIZE, 1.0, 0.0, task=t, fraction=True)
               for t in record.tasks}
    return [legacy[name] for name in record.objectives]


def task_objectives(objectives: list[Objective]) -> dict[str, Objective]:
    """``{task: its objective}``."""
    return {o.task: o for o in objectives if o.task}


def metric_names(objectives: list[Objective]) -> dict[str, str]:
    """``{task: its metric's name}`` (``accuracy``, ``mse``, …)."""
    return {task: o.name.split(".", 1)[0] for task, o in task_objectives(objectives).items()}
