"""The search-space schema: pydantic models whose errors name field, value and what is allowed.

Validation happens in two stages, both before anything is written: the schema
checks the file itself (:func:`automtl.config.load`); :meth:`SearchConfig.check`
checks it against the problem it names (tasks exist). The allowed values of
every registry-backed field come from the registries themselves.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator,
                      model_validator)

from automtl.backends import BACKENDS
from automtl.errors import UserError
from automtl.models import ARCHITECTURES, ModelSpec
from automtl.problems import Problem, get_problem
from automtl.pruning import STRATEGIES
from automtl.pruning.layers import HEADS
from automtl.pruning.scoring import AGGREGATES
from automtl.promotion import PROMOTIONS
from automtl.samplers import SAMPLERS
from automtl.optimizers import OPTIMIZERS, OptimizerSettings
from automtl.schedules import SCHEDULES, WARMS_UP_ITSELF
from automtl.train import TrainConfig
from automtl.weighting import WEIGHTINGS, options_of

LOSS_METHODS = ("simplex", "fixed", *sorted(set(WEIGHTINGS) - {"static"}))
# "metrics": every task's metric (accuracy, mse, ...); "accuracy" is its older name.
OBJECTIVES = ("sparsity", "metrics", "parameters", "flops", "latency_ms")
SEED_STRATEGY = "global_magnitude"
DEVICES = ("auto", "cpu", "cuda")  # where trials compute
IN_MEMORY = "in-memory:"  # problem.name of a run whose Problem was passed as an object
ScheduleName = Literal[tuple(SCHEDULES)]
RESUMABLE = ("trials", "timeout", "workers", "threads", "trial_batch", "tracking", "backend", "data", "keep_weights")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Range(Strict):
    """A searched number: uniform in [low, high], or log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite numbers, got [{self.low}, {self.high}]")
        if self.low > self.high:
            raise ValueError(f"empty range: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class ProblemConfig(Strict):
    """A registered problem or ``package.module:function``; ``pythonpath`` folders (relative
    to the search-space file) are importable while it is built, in every worker."""

    name: str = "multidigits"
    options: dict[str, Any] = Field(default_factory=dict)
    pythonpath: list[str] = Field(default_factory=list)

    @classmethod
    def given(cls, problem: Problem) -> "ProblemConfig":
        """Stands for a problem passed as an object: recorded by name, never rebuilt from the config."""
        return cls(name=f"{IN_MEMORY}{problem.name}")

    def build(self, seed: int) -> Problem:
        if self.name.startswith(IN_MEMORY):
            raise UserError(f"this run's problem ({self.name[len(IN_MEMORY):]!r}) was passed to automtl.search as a "
                            "Problem object, so it cannot be rebuilt from the config; pass the same Problem again "
                            "(problem=...)")
        for folder in reversed(self.pythonpath):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        return get_problem(self.name, seed=seed, **self.options)


class ModelConfig(Strict):
    arch: str | None = None
    hidden: list[PositiveInt] | None = None
    channels: list[PositiveInt] | None = None
    depth: PositiveInt | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value):
        if value is not None and value not in ARCHITECTURES:
            raise ValueError(f"{value!r} is unknown; allowed: {sorted(ARCHITECTURES)}")
        return value

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class OptimizerConfig(Strict):
    """The optimiser of a training recipe (the learning rate is the recipe's ``lr``): ``weight_decay`` for
    all, ``betas`` (default 0.9, 0.999) for adam and adamw, ``momentum`` (default 0.9) and ``nesterov`` for
    sgd."""

    name: Literal[tuple(OPTIMIZERS)] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] | None = None
    momentum: float | None = Field(None, ge=0.0, lt=1.0)
    nesterov: bool | None = None

    @model_validator(mode="after")
    def _applies(self) -> "OptimizerConfig":
        owners = {"momentum": ("sgd",), "nesterov": ("sgd",), "betas": ("adam", "adamw")}
        for option, names in owners.items():
            if getattr(self, option) is not None and self.name not in names:
                raise ValueError(f"{option} applies to {' and '.join(names)} only, not to {self.name}")
        if self.betas is not None and not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        if self.nesterov and self.settings().momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self

    def settings(self) -> OptimizerSettings:
        """The optimiser's settings, its defaults where none is given."""
        return OptimizerSettings(**self.model_dump(exclude_none=True))


class TrainSettings(Strict):
    """A training recipe: ``optimizer`` for ``epochs`` at learning rate ``lr``, scaled after every batch by
    ``schedule`` (constant; cosine to zero; step: times ``gamma`` every ``step_epochs`` epochs; onecycle:
    torch's one-cycle policy) after a linear warm-up over ``warmup_epochs``; ``grad_clip`` bounds the
    gradients' total norm before each step."""

    epochs: PositiveInt
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleName = "constant"
    warmup_epochs: float = Field(0.0, ge=0.0)
    step_epochs: PositiveInt | None = None
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    grad_clip: PositiveFloat | None = None

    @model_validator(mode="after")
    def _schedule_fits(self) -> "TrainSettings":
        if self.epochs != "auto" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs:g} must be below epochs {self.epochs}")
        warming = [name for name in self.schedule_names if name in WARMS_UP_ITSELF]
        if self.warmup_epochs and warming:
            raise ValueError(f"schedule {warming[0]} warms up by itself: leave warmup_epochs at 0")
        if ("step" in self.schedule_names) != (self.step_epochs is not None):
            raise ValueError("schedule step needs step_epochs (decay every that many epochs), and step_epochs "
                             "applies to schedule step only")
        return self

    @property
    def schedule_names(self) -> tuple[str, ...]:
        """The schedule, or the schedules a fine-tune searches among (the first where a plan names none)."""
        return (self.schedule,) if isinstance(self.schedule, str) else tuple(self.schedule)

    def recipe(self, lr: float | None = None, schedule: str | None = None) -> TrainConfig:
        """The :class:`~automtl.train.TrainConfig` of these settings (at learning rate ``lr`` and with
        ``schedule`` if given)."""
        if self.epochs == "auto":
            raise ValueError("epochs auto is chosen at the search's start (automtl.fidelity.resolve)")
        return TrainConfig(epochs=self.epochs, lr=self.lr if lr is None else lr, batch_size=self.batch_size,
                           optimizer=self.optimizer.settings(), schedule=schedule or self.schedule_names[0],
                           warmup_epochs=self.warmup_epochs, step_epochs=self.step_epochs or 1, gamma=self.gamma,
                           grad_clip=self.grad_clip)


class DenseSettings(TrainSettings):
    """The dense reference every trial starts from: trained by automtl with this recipe (cached in the run
    directory), or given: ``weights`` (a state dict, ``.pt``/``.pth`` or ``.safetensors``, relative to the
    search-space file) loaded into the problem's model, or ``train: false`` for the model the problem's
    factory returns as it is. A given model is never retrained."""

    epochs: PositiveInt = 20
    weights: str | None = None
    train: bool | None = None  # null: automtl trains it unless weights are given

    @model_validator(mode="after")
    def _weights_are_not_retrained(self) -> "DenseSettings":
        if self.weights is not None and self.train:
            raise ValueError("weights are a trained model, which automtl never retrains: drop train: true")
        return self

    @property
    def given(self) -> bool:
        """Whether the dense model is given (weights or the factory's model), not trained by automtl."""
        return self.weights is not None or self.train is False


class GradualConfig(Strict):
    """Reach the plan's masks gradually: ``steps`` pruning steps spread over the first ``epochs`` of
    fine-tuning, removing the cubic schedule's share of what the plan removes (smallest |w| first)."""

    epochs: PositiveFloat = 1.0
    steps: PositiveInt = 8


class FineTuneSettings(TrainSettings):
    """The fine-tune of every trial (its full fidelity when rungs stop trials early); ``lr`` may be a
    searched range (each trial's plan then carries its own learning rate), given in multiples of the dense
    training's ``lr`` with ``relative: true``; ``schedule`` may be a list of schedules searched per plan
    (a categorical; queued plans that name none take the first); ``epochs: auto`` is chosen at the search's
    start from the measured cost of one epoch and the ``timeout`` (:mod:`automtl.fidelity`)."""

    epochs: PositiveInt | Literal["auto"]
    lr: PositiveFloat | Range = 1e-3
    schedule: ScheduleName | list[ScheduleName] = "constant"
    gradual: GradualConfig | None = None

    @field_validator("lr")
    @classmethod
    def _positive_range(cls, value):
        if isinstance(value, Range) and value.low <= 0:
            raise ValueError(f"a learning-rate range needs low > 0, got {value.low}")
        return value

    @field_validator("schedule")
    @classmethod
    def _distinct_schedules(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError(f"a searched schedule needs distinct names from {list(SCHEDULES)}")
        return value

    @property
    def searched_schedules(self) -> tuple[str, ...]:
        """The schedules each plan chooses among (empty when there is one)."""
        return self.schedule_names if len(self.schedule_names) > 1 else ()

    @property
    def middle_lr(self) -> float:
        """The fixed learning rate, or the geometric middle of the searched range."""
        return self.lr if isinstance(self.lr, float) else math.sqrt(self.lr.low * self.lr.high)

    def recipe(self, lr: float | None = None, schedule: str | None = None) -> TrainConfig:
        """The :class:`~automtl.train.TrainConfig` of a trial with learning rate ``lr`` (default:
        :attr:`middle_lr`) and ``schedule`` (default: the first of :attr:`schedule_names`)."""
        return super().recipe(self.middle_lr if lr is None else lr, schedule)


class RungsConfig(Strict):
    """Multi-fidelity (MO-ASHA's stopping rule): a trial is judged after ``min_epochs`` fine-tune epochs,
    then after every ``reduction``-fold more, and goes on only while it is non-dominated or ranks in the best
    1/``reduction`` (non-dominated rank, then crowding distance) of every trial judged at that rung; with
    ``promote: hypervolume``, only while its share of the rung's hypervolume is among the best 1/``reduction``."""

    min_epochs: PositiveInt = 1
    reduction: int = Field(3, ge=2)
    promote: Literal[tuple(PROMOTIONS)] = "rank"  # who goes on (automtl.promotion): rank, or hypervolume share

    def milestones(self, epochs: int) -> list[int]:
        """The epochs at which a trial of an ``epochs``-epoch fine-tune is judged, the last being ``epochs``."""
        marks, mark = [], self.min_epochs
        while mark < epochs:
            marks.append(mark)
            mark *= self.reduction
        return [*marks, epochs]


class FocusConfig(Strict):
    """Floors on every task metric relative to the dense model (validation): a trial is feasible when each
    maximised metric is at least ``min_relative`` x dense and each minimised one at most dense / ``min_relative``.
    Samplers that take constraints (tpe, nsga2, nsga3, gp) steer towards feasible trials. With ``ceiling``,
    a queued plan pruned at least as far as a queued global-magnitude plan that missed a floor is not
    fine-tuned (:mod:`automtl.ceiling`); with ``climb``, further global-magnitude levels are queued towards the
    sparsest that keeps every floor (:mod:`automtl.climb`)."""

    min_relative: float = Field(gt=0.0, le=1.0)
    ceiling: bool = False
    climb: bool = False


class DataConfig(Strict):
    """How splits are read outside training: ``batch_size`` of evaluation (and of loading samples from a
    Dataset split), ``num_workers`` DataLoader workers of Dataset splits (0 = in the trial's process)."""

    batch_size: PositiveInt = 1024
    num_workers: NonNegativeInt = 0


class PruningConfig(Strict):
    """Which strategies may be used and each one's threshold range (null = its full range)."""

    strategies: dict[str, Range | None]
    order: Literal["searched", "fixed"] = "searched"
    min_strategies: PositiveInt = 1
    max_strategies: PositiveInt | None = None
    aggregate: Literal[tuple(AGGREGATES)] = "max"
    heads: Literal[HEADS] = "exclude"
    calibration_size: PositiveInt = 1024

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: dict) -> dict:
        if not value:
            raise ValueError(f"name at least one strategy; allowed: {sorted(STRATEGIES)}")
        resolved = {}
        for name, rng in value.items():
            if name not in STRATEGIES:
                raise ValueError(f"strategy {name!r} is unknown; allowed: {sorted(STRATEGIES)}")
            spec = STRATEGIES[name].threshold
            rng = rng or Range(low=spec.low, high=spec.high)
            if rng.low < spec.low or rng.high > spec.high:
                raise ValueError(
                    f"{name} threshold {spec.symbol} range [{rng.low:g}, {rng.high:g}] "
                    f"must lie within [{spec.low:g}, {spec.high:g}]"
                )
            resolved[name] = rng
        return resolved

    @model_validator(mode="after")
    def _step_counts(self) -> "PruningConfig":
        n = len(self.strategies)
        if self.min_strategies > n:
            raise ValueError(f"min_strategies {self.min_strategies} exceeds the {n} strategies listed")
        if self.max_strategies is not None and not self.min_strategies <= self.max_strategies:
            raise ValueError(f"max_strategies {self.max_strategies} must be >= min_strategies {self.min_strategies}")
        return self


class LossWeightsConfig(Strict):
    """``method``: one of LOSS_METHODS, or a list of them searched as a categorical; ``options``: each
    dynamic method's hyperparameters, e.g. ``{gradnorm: {alpha: 1.0}, dwa: {temperature: 1.5}}``."""

    method: Literal[LOSS_METHODS] | list[Literal[LOSS_METHODS]] = "simplex"
    weights: dict[str, float] | None = None
    options: dict[str, dict[str, PositiveFloat]] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _known_options(cls, value):
        for method, options in value.items():
            if method not in WEIGHTINGS or method == "static":
                raise ValueError(f"{method!r} takes no options; methods with options: "
                                 f"{[m for m in WEIGHTINGS if options_of(m)]}")
            unknown = sorted(set(options) - set(options_of(method)))
            if unknown:
                raise ValueError(f"{method} has no option {unknown[0]!r}; allowed: {options_of(method)}")
        return value

    @property
    def methods(self) -> list[str]:
        return [self.method] if isinstance(self.method, str) else list(self.method)

    @model_validator(mode="after")
    def _weights_when_fixed(self) -> "LossWeightsConfig":
        if not self.methods:
            raise ValueError(f"method list is empty; allowed: {list(LOSS_METHODS)}")
        if "fixed" in self.methods and not self.weights:
            raise ValueError("method 'fixed' needs 'weights': {task: weight, ...}")
        if self.weights and any(not (w >= 0 and math.isfinite(w)) for w in self.weights.values()):
            raise ValueError(f"weights must be finite and >= 0, got {self.weights}")
        return self


class DistillationConfig(Strict):
    """Knowledge distillation from the dense model while fine-tuning; ``weight`` in [0, 1] (or a searched range)."""

    weight: float | Range = 0.0
    temperature: PositiveFloat = 2.0

    @field_validator("weight")
    @classmethod
    def _unit_interval(cls, value):
        low, high = (value, value) if isinstance(value, float) else (value.low, value.high)
        if not (0 <= low <= high <= 1):
            raise ValueError("must lie within [0, 1]")
        return value


class SamplerConfig(Strict):
    name: Literal[tuple(SAMPLERS)] = "tpe"
    startup_trials: PositiveInt = 10
    population_size: PositiveInt = 20


class PlanConfig(Strict):
    """A pipeline to evaluate before the sampler takes over (e.g. a known baseline)."""

    order: list[str]
    thresholds: dict[str, float]
    loss_method: str | None = None
    loss_weights: dict[str, float] | Literal["equal"] | None = None  # equal: 1 / tasks each, any task names
    distillation: float = 0.0
    lr: PositiveFloat | None = None  # the fine-tune's learning rate, when it is searched (else the config's)
    schedule: ScheduleName | None = None  # the fine-tune's schedule, when it is searched (else the first)

    def weights_for(self, task_names: list[str]) -> dict[str, float] | None:
        """The plan's task-loss weights on a problem with ``task_names``."""
        if self.loss_weights == "equal":
            return {t: 1 / len(task_names) for t in task_names}
        return self.loss_weights


class LatencyConfig(Strict):
    """How the ``latency_ms`` objective is timed: median CPU time of ``rounds`` forward passes on
    ``batch_size`` validation inputs, on the trial's model with its unused units removed."""

    batch_size: PositiveInt = 256
    rounds: PositiveInt = 10


class TrackingConfig(Strict):
    """MLflow: ``uri`` null = MLFLOW_TRACKING_URI or MLflow's default (sqlite:///mlflow.db here);
    ``experiment`` null = ``<name>/<run dir name>`` (one experiment per study)."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


class BackendConfig(Strict):
    """Who runs the trials: ``local`` worker processes, or Ray Tune (``address`` null = start a local Ray;
    ``auto`` or HOST:PORT = join a cluster). ``device``: where each trial computes (``auto`` = CUDA when
    the worker has a GPU, else CPU; a Ray trial given a GPU that torch cannot see fails, with the reason,
    unless ``device`` is ``cpu``)."""

    name: Literal[tuple(BACKENDS)] = "local"
    address: str | None = None
    cpus_per_trial: PositiveFloat = 1.0
    gpus_per_trial: float = Field(0.0, ge=0.0)
    max_concurrent: PositiveInt | None = None
    device: Literal[DEVICES] = "auto"

    @model_validator(mode="after")
    def _ray_options_need_ray(self) -> "BackendConfig":
        if self.name == "local" and (self.address or self.gpus_per_trial or self.max_concurrent):
            raise ValueError("address, gpus_per_trial and max_concurrent apply to the ray backend only "
                             "(set backend.name: ray, or pass --backend ray)")
        if self.gpus_per_trial > 1 and not self.gpus_per_trial.is_integer():
            raise ValueError(f"gpus_per_trial above 1 must be a whole number, got {self.gpus_per_trial}")
        return self


class SearchConfig(Strict):
    """A whole search: problem, model, pruning space, loss weighting, budget, sampler."""

    name: str = Field("search", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    problem: ProblemConfig = ProblemConfig()
    model: ModelConfig = ModelConfig()
    dense: DenseSettings = DenseSettings()
    fine_tune: FineTuneSettings = FineTuneSettings(epochs=3)
    rungs: RungsConfig | None = None
    focus: FocusConfig | None = None
    data: DataConfig = DataConfig()
    pruning: PruningConfig
    loss_weights: LossWeightsConfig = LossWeightsConfig()
    distillation: DistillationConfig = DistillationConfig()
    objectives: list[Literal[OBJECTIVES]] = ["sparsity", "metrics"]
    latency: LatencyConfig = LatencyConfig()
    sampler: SamplerConfig = SamplerConfig()
    enqueue: list[PlanConfig] = Field(default_factory=list)
    # Global-magnitude shares (0.9 = 90 % of the hidden weights) evaluated first, with equal task weights:
    # the plans a hand-written search would try, so the front starts where such a search ends.
    seed_front: list[float] = Field(default_factory=list)
    tracking: TrackingConfig = TrackingConfig()
    backend: BackendConfig = BackendConfig()
    # An Optuna RDB storage for the study (SQLAlchemy URL, e.g. postgresql://user@host/db); null = the run
    # directory's journal file. Fixed when the study is created.
    storage: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9+]*://")
    trials: PositiveInt = 60
    timeout: PositiveFloat | None = None
    workers: PositiveInt = 1
    threads: PositiveInt | None = None
    # Trials a local worker, or one Ray trial slot, fine-tunes together in one vectorised pass
    # (automtl.stacked); auto: 1 on the CPU, several on CUDA (devices.batch_size). 1 = one at a time.
    trial_batch: PositiveInt | Literal["auto"] = "auto"
    # Whose pruned weights stay on disk (automtl.retention): front = the trials that may still be picked for
    # export (a trial's file goes once another dominates it); all = every completed trial's.
    keep_weights: Literal["front", "all"] = "front"

    @model_validator(mode="after")
    def _enqueued_plans_fit_the_space(self) -> "SearchConfig":
        strategies = self.pruning.strategies
        for i, plan in enumerate(self.enqueue):
            where = f"enqueue.{i}"
            if not plan.order or len(set(plan.order)) != len(plan.order) or not set(plan.order) <= set(strategies):
                raise ValueError(f"{where}.order {plan.order} must list distinct strategies from {list(strategies)}")
            if set(plan.thresholds) != set(plan.order):
                raise ValueError(f"{where}.thresholds must give one value per strategy in order {plan.order}")
            for name, value in plan.thresholds.items():
                rng = strategies[name]
                if not rng.low <= value <= rng.high:
                    raise ValueError(f"{where}.thresholds.{name} = {value} is outside its range [{rng.low}, {rng.high}]")
            method = plan.loss_method or self.loss_weights.methods[0]
            if method not in self.loss_weights.methods:
                raise ValueError(f"{where}.loss_method {method!r} is not among {self.loss_weights.methods}")
            if method == "simplex" and not plan.loss_weights:
                raise ValueError(f"{where}.loss_weights are needed with the simplex method")
            lr = self.fine_tune.lr
            if plan.lr is not None and not (isinstance(lr, Range) and lr.low <= plan.lr <= lr.high):
                raise ValueError(f"{where}.lr {plan.lr} needs fine_tune.lr to be a range that holds it, got {lr}")
            if plan.schedule is not None and plan.schedule not in self.fine_tune.searched_schedules:
                raise ValueError(f"{where}.schedule {plan.schedule} needs fine_tune.schedule to be a list that "
                                 f"holds it, got {self.fine_tune.schedule}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _lr_relative_to_dense(cls, data: Any) -> Any:
        """``fine_tune.lr: {low, high, relative: true}``: multiples of ``dense.lr``, resolved here."""
        fine_tune = data.get("fine_tune") if isinstance(data, dict) else None
        lr = fine_tune.get("lr") if isinstance(fine_tune, dict) else None
        if not isinstance(lr, dict) or "relative" not in lr:
            return data
        lr = dict(lr)
        if lr.pop("relative") is not True:
            return {**data, "fine_tune": {**fine_tune, "lr": lr}}
        dense = data.get("dense") if isinstance(data.get("dense"), dict) else {}
        base = dense.get("lr", DenseSettings.model_fields["lr"].default)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (base, lr.get("low"), lr.get("high"))):
            return data  # left for the schema to refuse with its own message
        return {**data, "fine_tune": {**fine_tune, "lr": lr | {"low": lr["low"] * base, "high": lr["high"] * base}}}

    @model_validator(mode="after")
    def _fidelity(self) -> "SearchConfig":
        epochs = self.fine_tune.epochs
        if epochs == "auto":
            if self.timeout is None:
                raise ValueError("fine_tune.epochs auto is chosen from the search's time budget: set timeout "
                                 "(seconds), or give fine_tune.epochs as a number")
            return self
        if self.rungs and self.rungs.min_epochs >= epochs:
            raise ValueError(f"rungs.min_epochs {self.rungs.min_epochs} must be below fine_tune.epochs {epochs}")
        gradual = self.fine_tune.gradual
        end = self.rungs.min_epochs if self.rungs else epochs
        if gradual and gradual.epochs > end:
            raise ValueError(f"fine_tune.gradual.epochs {gradual.epochs:g} must be at most "
                             f"{'rungs.min_epochs' if self.rungs else 'fine_tune.epochs'} ({end}): trials are "
                             "judged with the plan's masks in place")
        return self

    @model_validator(mode="after")
    def _seeded_plans_fit_the_space(self) -> "SearchConfig":
        if not self.seed_front:
            return self
        rng = self.pruning.strategies.get(SEED_STRATEGY)
        if rng is None:
            raise ValueError(f"seed_front needs the {SEED_STRATEGY!r} strategy in pruning.strategies")
        if self.pruning.min_strategies != 1 or (self.pruning.order == "fixed" and len(self.pruning.strategies) > 1):
            raise ValueError(f"seed_front plans use {SEED_STRATEGY!r} alone: they need pruning.min_strategies 1 "
                             "and pruning.order searched (or no other strategy)")
        outside = [v for v in self.seed_front if not rng.low <= v <= rng.high]
        if outside:
            raise ValueError(f"seed_front {outside} lie outside pruning.strategies.{SEED_STRATEGY} "
                             f"[{rng.low:g}, {rng.high:g}]")
        return self

    @model_validator(mode="after")
    def _seed_levels_can_adapt(self) -> "SearchConfig":
        setters = self.seed_front or [p for p in self.enqueue if p.order == [SEED_STRATEGY]]
        if self.focus and self.focus.ceiling and not setters:
            raise ValueError(f"focus.ceiling is set by queued {SEED_STRATEGY!r} plans: give seed_front (e.g. [0.5, "
                             f"0.8, 0.9, 0.95]) or enqueue a plan of {SEED_STRATEGY!r} alone, or drop ceiling")
        if self.focus and self.focus.climb and not self.seed_front:
            raise ValueError("focus.climb goes on from the sparsest seed_front level: give seed_front (e.g. [0.5, "
                             "0.8, 0.9, 0.95]), or drop climb")
        return self

    def seed_plan(self, share: float) -> PlanConfig:
        """The seeded front's plan at ``share``: global magnitude alone, equal task weights when the weights are
        searched (else the first loss method), the least distillation the config allows."""
        weight = self.distillation.weight
        method = "simplex" if "simplex" in self.loss_weights.methods else self.loss_weights.methods[0]
        return PlanConfig(order=[SEED_STRATEGY], thresholds={SEED_STRATEGY: share}, loss_method=method,
                          loss_weights="equal" if method == "simplex" else None,
                          distillation=weight if isinstance(weight, float) else weight.low)

    def seed_plans(self) -> list[PlanConfig]:
        """The plans of ``seed_front``, in its order."""
        return [self.seed_plan(share) for share in self.seed_front]

    @field_validator("objectives", mode="before")
    @classmethod
    def _metrics_was_accuracy(cls, value: Any) -> Any:
        return ["metrics" if v == "accuracy" else v for v in value] if isinstance(value, list) else value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[str]) -> list[str]:
        if "sparsity" not in value or "metrics" not in value or len(set(value)) != len(value):
            raise ValueError(f"must contain 'sparsity' and 'metrics' once each (optionally any of "
                             f"{[o for o in OBJECTIVES if o not in ('sparsity', 'metrics')]}), got {value}")
        return value

    def check(self, task_names: list[str]) -> None:
        """Refuse task names the problem does not have."""
        named = [("loss_weights.weights", self.loss_weights.weights)]
        named += [(f"enqueue.{i}.loss_weights", p.loss_weights) for i, p in enumerate(self.enqueue)
                  if p.loss_weights != "equal"]
        for field, weights in named:
            if weights is not None and set(weights) != set(task_names):
                raise UserError(
                    f"{field}: names tasks {sorted(weights)}; the problem "
                    f"{self.problem.name!r} has tasks {task_names}"
                )

    def build_problem(self) -> Problem:
        """The problem for ``seed``, its Dataset splits loading as ``data`` says."""
        return self.problem.build(self.seed).loading(self.data.batch_size, self.data.num_workers)

    def model_spec(self, problem: Problem) -> ModelSpec:
        """The model searched on ``problem``: its default model with this config's ``model`` fields."""
        return problem.default_model.override(**self.model.overrides())

    def study_identity(self) -> dict[str, Any]:
        """The fields a resumed study must share with the original (budget and resources may change; given
        dense weights are compared by their digest, wherever the file now lies)."""
        excluded = {name: True for name in (*RESUMABLE, "enqueue", "seed_front")} | {"dense": {"weights"}}
        return self.model_dump(mode="json", exclude=excluded)
