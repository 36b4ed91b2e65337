"""The focus region: floors on the task metrics that a search steers towards.

``focus: {min_relative: r}`` puts a floor under every task metric, relative to
the dense model's validation value: a maximised metric must reach ``r x
dense``, a minimised one stay below ``dense / r`` (for a metric that can be
negative: within ``(1 - r) |dense|`` below, or ``(1 / r - 1) |dense|`` above). The floors are fixed once
the dense model is evaluated and stored on the study (attribute ``focus``:
``{task: floor}``). Every finished or stopped trial gets one Optuna constraint
per task (``focus.<task>``: by how much it misses the floor, <= 0 = met;
``Trial.set_constraint``), which TPE, NSGA-II/III and GP use to prefer
feasible trials; ``status`` and the dashboard say how many trials, and how
many front points, lie in focus, and the front's hypervolume inside the region
(each task's nadir moved up to its floor).

Example:
    >>> from automtl.objectives import Objective
    >>> accuracy = Objective("accuracy.left", "maximize", task="left")
    >>> floors(0.9, [accuracy], {"left": 0.95})
    {'left': 0.855}
    >>> contains({"left": 0.855}, [accuracy], {"left": 0.9})
    True
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from automtl.objectives import Objective, of_attrs as objectives_of, task_objectives
from automtl.records import StudyRecord

FOCUS = "focus"  # what the floors are called: the study's StudyRecord.focus, each trial's constraint focus.<task>


def floors(min_relative: float, objectives: list[Objective], dense: Mapping[str, float]) -> dict[str, float]:
    """Each task's floor: ``min_relative`` x its dense value when maximised, dense / ``min_relative`` when
    not (measured from ``|dense|``, so a negative dense value gets a floor on its worse side too)."""
    def floor(value: float, maximize: bool) -> float:
        return value - (1 - min_relative) * abs(value) if maximize else value + (1 / min_relative - 1) * abs(value)

    return {task: round(floor(dense[task], o.maximize), 12) for task, o in task_objectives(objectives).items()}


def of_attrs(attrs: Mapping[str, Any]) -> dict[str, float]:
    """The floors a study stores (empty: no focus region)."""
    return dict(StudyRecord.from_attrs(attrs).focus or {})


def violations(floor: Mapping[str, float], objectives: list[Objective], metrics: Mapping[str, float]) -> list[float]:
    """By how much each task's metric misses its floor (<= 0: met), in the order of ``floor``."""
    by_task = task_objectives(objectives)
    return [floor[t] - metrics[t] if by_task[t].maximize else metrics[t] - floor[t] for t in floor]


def contains(floor: Mapping[str, float], objectives: list[Objective], metrics: Mapping[str, float]) -> bool:
    """Whether ``metrics`` meet every floor (always, without a focus region)."""
    return all(v <= 0 for v in violations(floor, objectives, metrics))


def bounded_by(floor: Mapping[str, float], objectives: list[Objective]) -> list[Objective]:
    """The objectives with each task's nadir moved to its floor: a hypervolume over them measures only
    the focus region."""
    return [replace(o, nadir=floor[o.task]) if o.task in floor else o for o in objectives]


def constraints(study_attrs: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, float]:
    """Optuna constraints of a trial with these ``metrics`` (``focus.<task>``: its violation; none without focus)."""
    floor = of_attrs(study_attrs)
    return {f"{FOCUS}.{t}": v for t, v in zip(floor, violations(floor, objectives_of(study_attrs), metrics))}
