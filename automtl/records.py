"""What a study stores: the one reader and writer of its Optuna user attributes, a trial's
(:class:`TrialRecord`) and the study's own (:class:`StudyRecord`).

A trial carries its decoded plan (strategy order, thresholds, loss weighting,
distillation) and the worker that ran it from the moment it starts; its
objective values at each rung it was judged (:mod:`automtl.rungs`); its
:class:`TrialResult` once it finished; ``stopped_at`` (fine-tune epochs) if a
rung stopped it; a ``fail_reason`` if it failed.
:meth:`TrialRecord.from_trial` reads all of it (run directories written before
task metrics had names, with ``accuracy`` / ``test_accuracy``, still load);
:meth:`TrialRecord.to_attrs` and :meth:`TrialResult.to_attrs` write it. Views
(Pareto analysis, plots, MLflow, the dashboard, export, the CLI) read records,
never ``user_attrs`` by string. The study's attributes (objectives, tasks,
dense reference and metrics, focus floors, the chosen fine-tune, the MLflow
runs) are read and written through :class:`StudyRecord` alike.

Example:
    >>> record = TrialRecord(number=3, state="complete", order=["magnitude"], thresholds={"magnitude": 0.1})
    >>> TrialRecord.from_attrs(3, "complete", None, record.to_attrs()).order
    ['magnitude']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from optuna.trial import FrozenTrial

FAIL_REASON = "fail_reason"
STOPPED_AT = "stopped_at"  # fine-tune epochs after which a rung stopped the trial
CEILING = "ceiling"  # the trial whose missed floor stopped this one before its fine-tune (automtl.ceiling)
COMPUTE_SECONDS = "compute_seconds"  # pruning + fine-tuning + evaluation (a stopped trial's: until it stopped)
RUNGS = "rungs"  # {str(epochs): objective values} at each rung the trial was judged
LEGACY_KEYS = {"metrics": "accuracy", "test_metrics": "test_accuracy"}  # names before tasks had metric names


@dataclass(frozen=True)
class MlflowLink:
    """Where a study's MLflow runs are: tracking URI, experiment (name and id) and the study's parent run."""

    uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str


@dataclass(frozen=True)
class StudyRecord:
    """A study's own attributes, typed. Read with :meth:`of` (older run directories' keys still read: dense
    metrics stored as ``dense_<split>_accuracy``, no dense reference meaning trained), written field by field
    with :meth:`write`. ``mlflow_active`` says whether this search's workers log to ``mlflow``."""

    objectives: list[str] = field(default_factory=list)  # names, in the order of the trials' values
    directions: list[str] = field(default_factory=list)
    objective_specs: list[dict] | None = None  # automtl.objectives.Objective fields, bounds included
    tasks: list[str] = field(default_factory=list)
    total_parameters: int = 1
    study_uid: str = ""
    dense_reference: dict = field(default_factory=lambda: {"source": "trained"})  # DenseModel.record()
    dense_test_metrics: dict[str, float] = field(default_factory=dict)
    dense_val_metrics: dict[str, float] = field(default_factory=dict)
    focus: dict[str, float] | None = None  # each task's floor (automtl.focus)
    fidelity: dict | None = None  # how fine_tune.epochs auto was chosen (automtl.fidelity.Fidelity)
    climbed: list[float] = field(default_factory=list)  # global-magnitude levels queued by automtl.climb
    mlflow: MlflowLink | None = None
    mlflow_active: bool = False

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "StudyRecord":
        plain = {f.name: attrs[f.name] for f in fields(cls) if f.name not in ("mlflow", *_LEGACY_DENSE)
                 and attrs.get(f.name) is not None}
        for name, old in _LEGACY_DENSE.items():
            if attrs.get(name) or attrs.get(old):
                plain[name] = attrs.get(name) or attrs[old]
        link = {f.name: attrs.get(_MLFLOW + f.name) for f in fields(MlflowLink)}
        return cls(**plain, mlflow=MlflowLink(**link) if all(link.values()) else None)

    @classmethod
    def of(cls, study) -> "StudyRecord":
        """The record of an Optuna study (anything with ``user_attrs``)."""
        return cls.from_attrs(study.user_attrs)

    @staticmethod
    def write(study, **values: Any) -> None:
        """Store the named fields on ``study`` (``mlflow``: a :class:`MlflowLink`)."""
        known = {f.name for f in fields(StudyRecord)}
        for name, value in values.items():
            if name not in known:
                raise KeyError(f"StudyRecord has no field {name!r}")
            if name == "mlflow":
                for key, item in asdict(value).items():
                    study.set_user_attr(_MLFLOW + key, item)
            else:
                study.set_user_attr(name, value)


_MLFLOW = "mlflow_"  # MlflowLink's fields are stored as mlflow_<field>
_LEGACY_DENSE = {"dense_test_metrics": "dense_test_accuracy", "dense_val_metrics": "dense_val_accuracy"}


@dataclass(frozen=True)
class TrialResult:
    """What running one plan measured: objective values, accounting, per-task metrics, timings, weights."""

    values: list[float]
    sparsity: float
    compression_ratio: float
    empty_units: int
    nonzero_parameters: int
    total_parameters: int
    metrics: dict[str, float]  # validation metric per task (the objectives)
    test_metrics: dict[str, float]  # test metric per task (for the record)
    final_loss_weights: dict[str, float]
    structure: dict[str, float]  # flops / latency_ms of the shrunk model, when they are objectives
    prune_seconds: float
    fine_tune_seconds: float
    eval_seconds: float
    weights: str  # the pruned weights, relative to the run directory

    @property
    def compute_seconds(self) -> float:
        return self.prune_seconds + self.fine_tune_seconds + self.eval_seconds

    def to_attrs(self) -> dict[str, Any]:
        """Every field but the objective values (Optuna keeps those), plus ``compute_seconds``."""
        attrs = {k: v for k, v in asdict(self).items() if k != "values"}
        return attrs | {COMPUTE_SECONDS: self.compute_seconds}

    @classmethod
    def from_attrs(cls, values: list[float], attrs: Mapping[str, Any]) -> "TrialResult":
        read = {f.name: attrs.get(f.name, attrs.get(LEGACY_KEYS.get(f.name, ""))) for f in fields(cls)}
        return cls(**read | {"values": list(values), "structure": read["structure"] or {},
                             "final_loss_weights": read["final_loss_weights"] or {}})


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the views read it: number, state, objective values, plan, worker, result or failure."""

    number: int
    state: str  # Optuna's state, lower case: complete, running, fail, waiting, pruned
    values: tuple[float, ...] | None = None
    order: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    loss_method: str | None = None
    loss_weights: dict[str, float] | None = None
    distillation: float = 0.0
    worker: str | None = None
    result: TrialResult | None = None
    fail_reason: str | None = None
    stopped_at: int | None = None
    rungs: dict[str, list[float]] = field(default_factory=dict)
    stopped_seconds: float = 0.0  # what a stopped trial spent before its rung stopped it
    ceiling: int | None = None  # stopped before its fine-tune at the ceiling this trial set

    lr: float | None = None
    schedule: str | None = None
    PLAN = ("order", "thresholds", "loss_method", "loss_weights", "distillation", "lr", "schedule")

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> "TrialRecord":
        return cls.from_attrs(trial.number, trial.state.name.lower(), trial.values, trial.user_attrs)

    @classmethod
    def from_attrs(cls, number: int, state: str, values, attrs: Mapping[str, Any]) -> "TrialRecord":
        result = TrialResult.from_attrs(values, attrs) if values is not None and "sparsity" in attrs else None
        plan = {k: attrs[k] for k in cls.PLAN if attrs.get(k) is not None}
        return cls(number, state, tuple(values) if values is not None else None, **plan,
                   worker=attrs.get("worker"), result=result, fail_reason=attrs.get(FAIL_REASON),
                   stopped_at=attrs.get(STOPPED_AT), rungs=attrs.get(RUNGS) or {},
                   stopped_seconds=attrs.get(COMPUTE_SECONDS, 0.0) if attrs.get(STOPPED_AT) is not None else 0.0,
                   ceiling=attrs.get(CEILING))

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes this record stores (its plan, worker, result, failure)."""
        attrs: dict[str, Any] = {k: getattr(self, k) for k in self.PLAN}
        if self.worker is not None:
            attrs["worker"] = self.worker
        if self.result is not None:
            attrs |= self.result.to_attrs()
        if self.fail_reason is not None:
            attrs[FAIL_REASON] = self.fail_reason
        if self.stopped_at is not None:
            attrs |= {STOPPED_AT: self.stopped_at, COMPUTE_SECONDS: self.stopped_seconds}
        if self.rungs:
            attrs[RUNGS] = self.rungs
        if self.ceiling is not None:
            attrs[CEILING] = self.ceiling
        return attrs

    @property
    def plan(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.PLAN}

    @property
    def compute_seconds(self) -> float:
        """What the trial spent computing: its result's, or a stopped trial's until its rung stopped it."""
        return self.result.compute_seconds if self.result else self.stopped_seconds

    @property
    def complete(self) -> bool:
        return self.state == "complete" and self.result is not None

    def weight_of(self, task: str) -> float:
        """The task's loss weight: searched, or the learned final weight of a dynamic method."""
        weights = self.loss_weights or (self.result.final_loss_weights if self.result else {}) or {}
        return weights.get(task, 0.0)


def records(trials: list[FrozenTrial]) -> list[TrialRecord]:
    return [TrialRecord.from_trial(t) for t in trials]


def failure_attrs(reason: str) -> dict[str, str]:
    """The attributes that mark a trial failed, and why."""
    return {FAIL_REASON: reason}
