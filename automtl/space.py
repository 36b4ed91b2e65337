"""The search space: an Optuna trial <-> a decoded :class:`TrialPlan`.

This is the only module that knows how a plan is encoded for a sampler.

* **Which strategies** — a boolean ``use.<strategy>`` per configured strategy.
* **Their order** — a Lehmer code over *all* configured strategies
  (``order.<i>`` in ``[0, n-1-i]``, Optuna's FAQ recipe for permutations); the
  included strategies are applied in the order the decoded permutation lists
  them. Every distribution is fixed, so every sampler (TPE, NSGA-II/III, GP,
  random) handles it; every ordered subset is reachable.
  If fewer than ``min_strategies`` are included, the first excluded ones of the
  permutation join; beyond ``max_strategies`` the last ones are dropped.
* **Thresholds** — ``threshold.<strategy>``, suggested only for included strategies.
* **Loss weights** — ``loss.method`` (categorical, when several are allowed);
  for ``simplex``, ``loss.u.<task>`` in (0, 1] and weights ``-log u_t / sum``
  (uniform on the simplex when the u are uniform).
* **Distillation** — ``distill.weight`` when it is a searched range.
* **Learning rate** — ``fine_tune.lr`` when the fine-tune's learning rate is a searched range.
* **Schedule** — ``fine_tune.schedule`` (categorical) when the fine-tune's schedule is a list.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from automtl.config import PlanConfig, Range, SearchConfig

U_LOW = 1e-6


@dataclass(frozen=True)
class TrialPlan:
    """What one trial does, decoded and readable."""

    order: list[str]
    thresholds: dict[str, float]
    loss_method: str
    loss_weights: dict[str, float] | None = None
    distillation: float = 0.0
    lr: float | None = None  # the fine-tune's learning rate when it is searched (None: the config's)
    schedule: str | None = None  # the fine-tune's schedule when it is searched (None: the config's first)

    @property
    def steps(self) -> list[tuple[str, float]]:
        return [(name, self.thresholds[name]) for name in self.order]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lehmer_decode(code: list[int], items: list[str]) -> list[str]:
    """The permutation of ``items`` whose Lehmer code is ``code`` (len(items) - 1 digits)."""
    pool = list(items)
    return [pool.pop(digit) for digit in [*code, 0]][: len(items)] if items else []


def lehmer_encode(permutation: list[str], items: list[str]) -> list[int]:
    """Inverse of :func:`lehmer_decode`."""
    pool = list(items)
    code = []
    for item in permutation[:-1]:
        code.append(pool.index(item))
        pool.remove(item)
    return code


def _suggest(trial: optuna.Trial, name: str, rng: Range | float) -> float:
    if isinstance(rng, float):
        return rng
    if rng.low == rng.high:
        return rng.low
    return trial.suggest_float(name, rng.low, rng.high, log=rng.log)


def suggest(trial: optuna.Trial, config: SearchConfig, task_names: list[str]) -> TrialPlan:
    """Sample a plan define-by-run."""
    pruning = config.pruning
    names = list(pruning.strategies)
    if pruning.order == "fixed":
        order = names
    else:
        included = [n for n in names if trial.suggest_categorical(f"use.{n}", [True, False])]
        code = [trial.suggest_int(f"order.{i}", 0, len(names) - 1 - i) for i in range(len(names) - 1)]
        permutation = lehmer_decode(code, names)
        order = [n for n in permutation if n in included]
        order += [n for n in permutation if n not in order][: max(0, pruning.min_strategies - len(order))]
        order = [n for n in permutation if n in order][: pruning.max_strategies or len(names)]
    thresholds = {n: _suggest(trial, f"threshold.{n}", pruning.strategies[n]) for n in order}

    methods = config.loss_weights.methods
    method = methods[0] if len(methods) == 1 else trial.suggest_categorical("loss.method", methods)
    weights = None
    if method == "simplex":
        raw = {t: -math.log(trial.suggest_float(f"loss.u.{t}", U_LOW, 1.0)) for t in task_names}
        total = sum(raw.values())
        weights = {t: v / total if total > 0 else 1 / len(raw) for t, v in raw.items()}
    elif method == "fixed":
        total = sum(config.loss_weights.weights.values())
        weights = {t: config.loss_weights.weights[t] / total for t in task_names}
    distillation = _suggest(trial, "distill.weight", config.distillation.weight)
    lr = config.fine_tune.lr
    lr = _suggest(trial, "fine_tune.lr", lr) if isinstance(lr, Range) else None
    schedules = config.fine_tune.searched_schedules
    schedule = trial.suggest_categorical("fine_tune.schedule", schedules) if schedules else None
    return TrialPlan(order, thresholds, method, weights, distillation, lr, schedule)


def encode(plan: TrialPlan, config: SearchConfig, task_names: list[str]) -> dict[str, Any]:
    """Parameters that make :func:`suggest` return ``plan`` (for ``study.enqueue_trial``)."""
    pruning = config.pruning
    names = list(pruning.strategies)
    params: dict[str, Any] = {}
    if pruning.order == "searched":
        permutation = plan.order + [n for n in names if n not in plan.order]
        params |= {f"use.{n}": n in plan.order for n in names}
        params |= {f"order.{i}": d for i, d in enumerate(lehmer_encode(permutation, names))}
    for name in plan.order:
        rng = pruning.strategies[name]
        if rng.low != rng.high:
            params[f"threshold.{name}"] = plan.thresholds[name]
    if len(config.loss_weights.methods) > 1:
        params["loss.method"] = plan.loss_method
    if plan.loss_method == "simplex":
        # -log u_t proportional to w_t; scale so every u stays inside [U_LOW, 1].
        scale = -math.log(U_LOW) / max(1.0, max(plan.loss_weights.values()) * 1.0001)
        params |= {f"loss.u.{t}": math.exp(-plan.loss_weights[t] * scale) for t in task_names}
    if isinstance(config.distillation.weight, Range) and config.distillation.weight.low != config.distillation.weight.high:
        params["distill.weight"] = plan.distillation
    lr = config.fine_tune.lr
    if isinstance(lr, Range) and lr.low != lr.high:
        params["fine_tune.lr"] = plan.lr if plan.lr is not None else config.fine_tune.middle_lr
    if schedules := config.fine_tune.searched_schedules:
        params["fine_tune.schedule"] = plan.schedule or schedules[0]
    return params


def plan_from_params(params: dict[str, Any], config: SearchConfig, task_names: list[str]) -> TrialPlan:
    """Decode stored parameters (e.g. a finished trial's) without a live trial."""
    return suggest(optuna.trial.FixedTrial(params), config, task_names)


def enqueue(study: optuna.Study, plan: PlanConfig, config: SearchConfig, task_names: list[str]) -> None:
    """Queue ``plan`` on ``study`` (``Study.enqueue_trial``): the next trial asked runs it, not a sampled plan."""
    method = plan.loss_method or config.loss_weights.methods[0]
    decoded = TrialPlan(plan.order, plan.thresholds, method, plan.weights_for(task_names), plan.distillation, plan.lr,
                        plan.schedule)
    study.enqueue_trial(encode(decoded, config, task_names))
