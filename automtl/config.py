"""The search-space file: a pydantic schema with errors that name field, value and what is allowed.

A file is YAML (see ``search_spaces/``). ``--set key.sub=value`` overrides any
field before validation. Validation happens in two stages, both before
anything is written: :func:`load` checks the file itself; :meth:`SearchConfig.check`
checks it against the problem it names (tasks exist).
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator,
                      model_validator)

from automtl.errors import UserError
from automtl.models import ARCHITECTURES
from automtl.problems import Problem, get_problem
from automtl.pruning import STRATEGIES
from automtl.pruning.base import AGGREGATES, HEADS
from automtl.weighting import WEIGHTINGS

class Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false; so ``off: 2`` and ``on``/``yes``/``no`` stay strings."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list(_first)
    )


def read_yaml(text: str):
    """Parse YAML with the 1.2 boolean rule above."""
    return yaml.load(text, Loader=Loader)


LOSS_METHODS = ("simplex", "fixed", *sorted(set(WEIGHTINGS) - {"static"}))
SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")
# "metrics": every task's metric (accuracy, mse, ...); "accuracy" is its older name.
OBJECTIVES = ("sparsity", "metrics", "parameters", "flops", "latency_ms")
RESUMABLE = ("trials", "timeout", "workers", "threads", "tracking", "backend", "data")


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

    def build(self, seed: int) -> Problem:
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


class TrainSettings(Strict):
    epochs: PositiveInt
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128


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
    """``method``: one of LOSS_METHODS, or a list of them searched as a categorical."""

    method: Literal[LOSS_METHODS] | list[Literal[LOSS_METHODS]] = "simplex"
    weights: dict[str, float] | None = None

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
    name: Literal[SAMPLERS] = "tpe"
    startup_trials: PositiveInt = 10
    population_size: PositiveInt = 20


class PlanConfig(Strict):
    """A pipeline to evaluate before the sampler takes over (e.g. a known baseline)."""

    order: list[str]
    thresholds: dict[str, float]
    loss_method: str | None = None
    loss_weights: dict[str, float] | None = None
    distillation: float = 0.0


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
    the worker has a GPU, else CPU)."""

    name: Literal["local", "ray"] = "local"
    address: str | None = None
    cpus_per_trial: PositiveFloat = 1.0
    gpus_per_trial: float = Field(0.0, ge=0.0)
    max_concurrent: PositiveInt | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"

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
    dense: TrainSettings = TrainSettings(epochs=20)
    fine_tune: TrainSettings = TrainSettings(epochs=3)
    data: DataConfig = DataConfig()
    pruning: PruningConfig
    loss_weights: LossWeightsConfig = LossWeightsConfig()
    distillation: DistillationConfig = DistillationConfig()
    objectives: list[Literal[OBJECTIVES]] = ["sparsity", "metrics"]
    latency: LatencyConfig = LatencyConfig()
    sampler: SamplerConfig = SamplerConfig()
    enqueue: list[PlanConfig] = Field(default_factory=list)
    tracking: TrackingConfig = TrackingConfig()
    backend: BackendConfig = BackendConfig()
    # An Optuna RDB storage for the study (SQLAlchemy URL, e.g. postgresql://user@host/db); null = the run
    # directory's journal file. Fixed when the study is created.
    storage: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9+]*://")
    trials: PositiveInt = 60
    timeout: PositiveFloat | None = None
    workers: PositiveInt = 1
    threads: PositiveInt | None = None

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
        return self

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
        named += [(f"enqueue.{i}.loss_weights", p.loss_weights) for i, p in enumerate(self.enqueue)]
        for field, weights in named:
            if weights is not None and set(weights) != set(task_names):
                raise UserError(
                    f"{field}: names tasks {sorted(weights)}; the problem "
                    f"{self.problem.name!r} has tasks {task_names}"
                )

    def build_problem(self) -> Problem:
        """The problem for ``seed``, its Dataset splits loading as ``data`` says."""
        return self.problem.build(self.seed).loading(self.data.batch_size, self.data.num_workers)

    def study_identity(self) -> dict[str, Any]:
        """The fields a resumed study must share with the original (budget and resources may change)."""
        return self.model_dump(mode="json", exclude=set(RESUMABLE) | {"enqueue"})


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.setdefault(key, {}), dict):
            raise UserError(f"--set {dotted}: {key!r} is not a section")
        node = node[key]
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value read as YAML (numbers, lists, null, …)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (e.g. fine_tune.epochs=2), got {text!r}")
    try:
        return key.strip(), read_yaml(value)
    except yaml.YAMLError as exc:
        raise UserError(f"--set {key}: value {value!r} is not valid YAML ({exc})") from None


def describe(exc: pydantic.ValidationError) -> str:
    """One line per problem: the field path, what is wrong, the value given."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if "[" not in str(p) and not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "is not a known field"
        lines.append(f"{field or '(top level)'}: {msg} (got {err.get('input')!r})")
    return "invalid search space:\n  " + "\n  ".join(dict.fromkeys(lines))


def validate(raw: Any) -> SearchConfig:
    if not isinstance(raw, dict):
        raise UserError(f"a search space must be a YAML mapping, got {type(raw).__name__}")
    try:
        return SearchConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise UserError(describe(exc)) from None


def load(path: str | Path, overrides: list[str] = ()) -> SearchConfig:
    """Read, override and validate a search-space file."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise UserError(f"search space {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read search space {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"search space {path} is not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if isinstance(raw, dict):
        raw.setdefault("name", path.stem)
        for text in overrides:
            _set(raw, *parse_override(text))
        problem = raw.get("problem")
        if isinstance(problem, dict) and isinstance(problem.get("pythonpath"), list):
            problem["pythonpath"] = [str((path.parent / str(p)).resolve()) for p in problem["pythonpath"]]
    return validate(raw)
