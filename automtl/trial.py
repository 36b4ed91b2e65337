"""Run one :class:`~automtl.space.TrialPlan` end to end.

prune (strategies in order, masks compose) -> fine-tune with the plan's task
weighting and learning rate, masks held (or closed gradually over the first
epochs), optionally distilling from the dense model, judged at every rung
milestone (:mod:`automtl.rungs`; a stopped trial raises :class:`~automtl.rungs.TrialStopped`) ->
recalibrate BatchNorm statistics for the final weights -> evaluate
on validation (the objectives) and test (for the record) -> save the pruned
weights compactly so the trial can be exported without re-running.
"""

from __future__ import annotations

import copy
import logging
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import torch
from torch import nn

from automtl import checkpoints, dense as dense_mod, objectives, stacked
from automtl.ceiling import Ceiling
from automtl.config import SearchConfig
from automtl.devices import batch_size, resolve_device
from automtl.errors import TrialFailed
from automtl.measure import shrunk_costs
from automtl.models import ModelSpec
from automtl.problems import Problem
from automtl.pruning import PipelineReport, PruneContext, apply, make_permanent
from automtl.pruning.gradual import GradualMasks
from automtl.records import TrialResult
from automtl.rundir import weights_path
from automtl.space import TrialPlan
from automtl.rungs import RungGate, RungJudge, TrialStopped, judged_objectives
from automtl.train import Distillation, Teacher, batches_per_epoch, evaluate, fit, recalibrate_batchnorm
from automtl.weighting import Weighting, make_weighting

log = logging.getLogger(__name__)


@dataclass
class Bench:
    """What every trial of a study shares: config, problem, model spec, trained dense model."""

    config: SearchConfig
    problem: Problem
    spec: ModelSpec
    dense: nn.Module
    run_dir: Path
    dense_seconds: float = 0.0
    _placed: dict = field(default_factory=dict, repr=False)
    _teachers: dict = field(default_factory=dict, repr=False)

    @classmethod
    def prepare(cls, config: SearchConfig, run_dir: str | Path, problem: Problem | None = None,
                reference: dense_mod.DenseModel | None = None) -> "Bench":
        """Build the problem and take the dense reference: ``reference``, else the given one the run directory
        keeps, else the one automtl trains once and caches under ``run_dir/dense``."""
        run_dir = Path(run_dir)
        problem = problem or config.build_problem()
        spec = config.model_spec(problem)
        dense = reference or dense_mod.stored(problem, spec, run_dir) or dense_mod.trained(
            problem, spec, config.dense.recipe(), config.seed, run_dir / "dense", resolve_device(config.backend.device))
        dense.model.eval()
        return cls(config, problem, spec, dense.model, run_dir, dense.seconds)

    @property
    def task_names(self) -> list[str]:
        return self.problem.task_names

    def trial_batch(self) -> int:
        """Trials a local worker fine-tunes together (:func:`batch_size` on this process's device)."""
        cuda = resolve_device(self.config.backend.device).type == "cuda"
        return batch_size(self.config, cuda, lambda: sum(p.numel() for p in self.dense.parameters()))

    def on(self, device: torch.device) -> tuple[Problem, nn.Module]:
        """The problem's data and the dense model on ``device`` (moved once, then reused)."""
        if device not in self._placed:
            self._placed[device] = (self.problem.to(device), copy.deepcopy(self.dense).to(device))
        return self._placed[device]

    def teacher(self, device: torch.device) -> Teacher:
        """The dense model as the trials' teacher on ``device``: its soft targets over the training split
        computed once (:meth:`automtl.train.Teacher.carrying`), read by every trial."""
        if device not in self._teachers:
            problem, dense = self.on(device)
            self._teachers[device] = Teacher(dense, self.config.distillation.temperature).carrying(
                problem, self.config.data.batch_size)
        return self._teachers[device]

    def __getstate__(self) -> dict:
        """The CPU copies only (Ray's object store, spawn); a problem with Dataset splits goes without its
        data and is rebuilt from the config where it is unpickled (its factory builds the Datasets)."""
        return {**self.__dict__, "_placed": {}, "_teachers": {},
                "problem": self.problem if self.problem.in_memory else None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, problem=state["problem"] or _rebuilt(state["config"].model_dump_json()))


@functools.lru_cache(maxsize=1)
def _rebuilt(config_json: str) -> Problem:
    """The problem of a search config, built once per process (Ray unpickles the bench for every trial)."""
    return SearchConfig.model_validate_json(config_json).build_problem()


Outcome = TrialResult | TrialStopped | Exception
"""How one trial of a batch ended: a result, stopped at a rung, or the exception that failed it."""


@dataclass(frozen=True)
class Job:
    """One trial to run: its plan and number, the ``gate`` judging it at its rungs (None: fine-tuned in full)
    and the sparsity ``ceiling`` it is held to before its fine-tune (:mod:`automtl.ceiling`; None: none)."""

    plan: TrialPlan
    number: int
    gate: RungGate | None = None
    ceiling: Ceiling | None = None

    @classmethod
    def of(cls, plan: TrialPlan, number: int, study: optuna.Study, bench: Bench) -> "Job":
        """Trial ``number`` of ``study`` with the gate and ceiling its search's config asks for."""
        return cls(plan, number, RungGate.of(study, number, bench.config, bench.problem),
                   Ceiling.of(study, number, bench.config))


@dataclass
class _Pruned:
    """A trial after pruning: its model with masks, and what its fine-tune needs."""

    plan: TrialPlan
    number: int
    model: nn.Module
    ctx: PruneContext
    planned: PipelineReport
    weighting: Weighting
    gradual_masks: GradualMasks | None
    judge: RungJudge | None
    prune_seconds: float
    fine_tune_seconds: float | None = None  # None until fine-tuned


def run(job: Job, bench: Bench) -> TrialResult:
    """Prune, fine-tune, evaluate and save; raise TrialFailed on a non-finite result.

    With the job's gate and ``rungs`` configured, the trial is judged at every rung milestone on its
    validation objectives and raises :class:`~automtl.rungs.TrialStopped` when the gate says stop; also,
    before any epoch, when its pruned model reaches the job's ceiling.
    """
    trial = _prune(job, bench)
    _fine_tune_alone(trial, bench)
    return _finish(trial, bench)


def run_batch(jobs: list[Job], bench: Bench, report: Callable[[int, Outcome], None]) -> None:
    """Run ``jobs``, fine-tuning those that can share one vectorised pass
    together (:mod:`automtl.stacked`); ``report(index, outcome)`` as soon as each one ends.

    Each trial's result is the one :func:`run` gives it alone, within float tolerance. Pruning, rung
    judging and evaluation stay per trial; a trial that fails, diverges or stops leaves the batch alone.
    """
    reported: set[int] = set()

    def ended(index: int, outcome: Outcome) -> None:
        reported.add(index)
        report(index, outcome)

    pruned: dict[int, _Pruned] = {}
    for index, job in enumerate(jobs):
        try:
            pruned[index] = _prune(job, bench)
        except Exception as exc:  # noqa: BLE001 - one trial's failure is its own
            ended(index, exc)
    stackable = {i: t for i, t in pruned.items() if type(t.weighting).stackable}
    if len(stackable) > 1:
        try:
            _fine_tune_together(stackable, bench, ended)
        except stacked.NotStackable as exc:
            log.warning("this model cannot be fine-tuned vectorised (%s); trials run one at a time", exc)
        except Exception as exc:  # noqa: BLE001 - the shared pass failed: so did every trial still in it
            for index in stackable.keys() - reported:
                ended(index, exc)
    for index, trial in pruned.items():
        if index in reported:
            continue
        try:
            if trial.fine_tune_seconds is None:
                _fine_tune_alone(trial, bench)
            outcome = _finish(trial, bench)
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        ended(index, outcome)


def _prune(job: Job, bench: Bench) -> _Pruned:
    """Apply the plan's strategies to a copy of the dense model and set up its fine-tune."""
    plan, number, config = job.plan, job.number, bench.config
    problem, dense = bench.on(resolve_device(config.backend.device))
    seed = config.seed + number
    torch.manual_seed(seed)
    model = copy.deepcopy(dense)
    started = time.perf_counter()
    ctx = PruneContext.create(
        model, problem, calibration_size=config.pruning.calibration_size,
        aggregate=config.pruning.aggregate, heads=config.pruning.heads, seed=seed,
    )
    planned = apply(model, plan.steps, ctx)
    reached = job.ceiling.reached(planned.sparsity) if job.ceiling else None
    if reached:
        _, reference, metrics = reached
        raise TrialStopped(0, [], metrics, time.perf_counter() - started, ceiling=reference)
    method = "static" if plan.loss_weights else plan.loss_method
    weighting = make_weighting(method, problem.task_names, plan.loss_weights, config.loss_weights.options.get(method))
    gradual = config.fine_tune.gradual
    gradual_masks = (GradualMasks(model, gradual.steps, round(gradual.epochs * batches_per_epoch(
        problem, config.fine_tune.recipe(plan.lr, plan.schedule)))) if gradual else None)
    judge = None
    if job.gate and config.rungs:
        wanted = judged_objectives(config, bench.problem)

        def score() -> tuple[list[float], dict[str, float]]:  # the trial's judged objectives now
            recalibrate_batchnorm(model, ctx.calibration, config.fine_tune.batch_size)
            metrics = evaluate(model, problem, problem.val, config.data.batch_size)
            _require_finite(metrics)
            return [float(v) for v in _measures(planned, metrics, problem, {}, wanted)], metrics

        judge = RungJudge(config.rungs.milestones(config.fine_tune.epochs)[:-1], job.gate, score)
    return _Pruned(plan, number, model, ctx, planned, weighting, gradual_masks, judge, time.perf_counter() - started)


def _fine_tune_alone(trial: _Pruned, bench: Bench) -> None:
    """Fine-tune one pruned trial with its loss weighting, distillation weight and learning rate (closing
    the masks gradually if configured); raise why it ended early, if it did. Every trial of a study reads
    the training data in the same order (seeded by the study's seed), as a batch of them does."""
    config, plan = bench.config, trial.plan
    device = resolve_device(config.backend.device)
    problem, _ = bench.on(device)
    distill = Distillation(bench.teacher(device), plan.distillation) if plan.distillation > 0 else None
    started = time.perf_counter()
    history = fit(trial.model, problem, config.fine_tune.recipe(plan.lr, plan.schedule), config.seed,
                  trial.weighting, distill, before_step=trial.gradual_masks, after_epoch=trial.judge)
    early = _ended_early(trial, history, time.perf_counter() - started)
    if early is not None:
        raise early


def _fine_tune_together(trials: dict[int, _Pruned], bench: Bench, report: Callable[[int, Outcome], None]) -> None:
    """Fine-tune ``trials`` in one vectorised pass; one that ends early (diverged, or stopped at a rung) is
    reported as it leaves."""
    config = bench.config
    device = resolve_device(config.backend.device)
    problem, dense = bench.on(device)

    def goes_on(index: int, trial: _Pruned, member: stacked.Member) -> Callable[[int], bool]:
        def after_epoch(epochs: int) -> bool:
            try:
                early = _ended_early(trial, member.history, member.seconds, finished=False)  # diverged?
                if early is None and trial.judge is not None and not trial.judge(epochs):
                    early = _ended_early(trial, member.history, member.seconds, finished=False)  # stopped here
            except TrialFailed as failed:  # its metrics at the rung are not finite
                early = failed
            if early is not None:
                report(index, early)
                return False
            return True
        return after_epoch

    members = {}
    for index, trial in trials.items():
        recipe = config.fine_tune.recipe(trial.plan.lr, trial.plan.schedule)
        member = stacked.Member(trial.model, trial.weighting, recipe.lr, trial.plan.distillation,
                                trial.gradual_masks, schedule=recipe.schedule)
        member.after_epoch = goes_on(index, trial, member)
        members[index] = member
    stacked.fit_together(list(members.values()), dense, problem, config.fine_tune.recipe(), config.seed,
                         bench.teacher(device))
    for index, trial in trials.items():
        trial.fine_tune_seconds = members[index].seconds  # its share: a batch's time counts once


def _ended_early(trial: _Pruned, history: list[dict[str, float]], seconds: float, finished: bool = True
                 ) -> TrialFailed | TrialStopped | None:
    """Why ``trial``'s fine-tune (``seconds`` so far, ``history`` of its task losses) ends early: it diverged,
    or its rung stopped it (with its compute so far). None when it goes on, or, ``finished``, ran to its end,
    whose ``seconds`` are then recorded."""
    if any(not math.isfinite(v) for epoch in history for v in epoch.values()):
        return TrialFailed(f"fine-tuning diverged: non-finite task loss {history[-1]}")
    stop = trial.judge.stop if trial.judge else None
    if stop is not None:
        return TrialStopped(stop.epochs, stop.values, stop.metrics, trial.prune_seconds + seconds)
    if finished:
        trial.fine_tune_seconds = seconds
    return None


def _finish(trial: _Pruned, bench: Bench) -> TrialResult:
    """Evaluate the fine-tuned trial, save its weights, and its result."""
    config = bench.config
    problem = trial.ctx.problem
    started = time.perf_counter()
    report, metrics, test_metrics, structure = _evaluate(trial.model, trial.ctx, problem, config)
    evaluated = time.perf_counter()
    values = [float(v) for v in _measures(report, metrics, problem, structure, objectives.declared(config, problem))]
    relative = weights_path(trial.number)
    checkpoints.save(bench.run_dir / relative, trial.model.state_dict(),
                     {"trial": trial.number, "plan": trial.plan.as_dict()}, compact=True)
    return TrialResult(
        values=values,
        sparsity=report.sparsity,
        compression_ratio=report.compression_ratio,
        empty_units=report.empty_units,
        nonzero_parameters=report.nonzero_parameters,
        total_parameters=report.total_parameters,
        metrics=metrics,
        test_metrics=test_metrics,
        final_loss_weights=trial.weighting.current(),
        structure=structure,
        prune_seconds=trial.prune_seconds,
        fine_tune_seconds=trial.fine_tune_seconds,
        eval_seconds=evaluated - started,
        weights=relative,
    )


def _evaluate(model: nn.Module, ctx: PruneContext, problem: Problem, config: SearchConfig):
    """Masks made permanent, BatchNorm recalibrated; the sparsity report, validation and test metrics and
    the structural costs of the shrunk model."""
    make_permanent(model)
    recalibrate_batchnorm(model, ctx.calibration, config.fine_tune.batch_size)
    report = apply(model, [], ctx)  # accounting after fine-tuning (masks held, so unchanged)
    metrics = evaluate(model, problem, problem.val, config.data.batch_size)
    test_metrics = evaluate(model, problem, problem.test, config.data.batch_size)
    _require_finite(metrics, test_metrics)
    return report, metrics, test_metrics, shrunk_costs(model, problem, config)


def _require_finite(*metric_sets: dict[str, float]) -> None:
    if any(not math.isfinite(v) for metrics in metric_sets for v in metrics.values()):
        raise TrialFailed(f"non-finite task metric {' / '.join(map(str, metric_sets))}")


def _measures(report: PipelineReport, metrics: dict[str, float], problem: Problem, structure: dict[str, float],
              wanted: list[objectives.Objective]) -> list[float]:
    """The values of the ``wanted`` objectives."""
    measures = {"sparsity": report.sparsity, "nonzero_parameters": report.nonzero_parameters, **structure}
    measures |= {task.objective: metrics[task.name] for task in problem.tasks}
    return [measures[o.name] for o in wanted]
