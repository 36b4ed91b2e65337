"""Run one :class:`~automtl.space.TrialPlan` end to end.

prune (strategies in order, masks compose) -> fine-tune with the plan's task
weighting, masks held, optionally distilling from the dense model ->
recalibrate BatchNorm statistics for the final weights -> evaluate
on validation (the objectives) and test (for the record) -> save the pruned
weights compactly so the trial can be exported without re-running.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from automtl import checkpoints
from automtl.config import SearchConfig
from automtl.models import ModelSpec
from automtl.problems import Problem
from automtl.measure import cpu_latency_ms, flops
from automtl.pruning import PruneContext, apply, make_permanent
from automtl.pruning.shrink import shrink
from automtl.space import TrialPlan
from automtl.train import Distillation, TrainConfig, dense_model, evaluate, fit, recalibrate_batchnorm
from automtl.weighting import make_weighting

MAXIMIZE, MINIMIZE = "maximize", "minimize"
STRUCTURAL = ("flops", "latency_ms")  # measured on the shrunk model (automtl.pruning.shrink)
SHRINK_CHECK_SAMPLES = 256


class TrialFailed(Exception):
    """A trial that produced no usable result (the reason is recorded on the trial)."""


def objectives(config: SearchConfig, task_names: list[str]) -> list[tuple[str, str]]:
    """``(name, direction)`` of every objective, in the order trials report them."""
    names: list[tuple[str, str]] = []
    for objective in config.objectives:
        if objective == "accuracy":
            names += [(f"accuracy.{t}", MAXIMIZE) for t in task_names]
        elif objective == "parameters":
            names.append(("nonzero_parameters", MINIMIZE))
        elif objective in STRUCTURAL:
            names.append((objective, MINIMIZE))
        else:
            names.append((objective, MAXIMIZE))
    return names


def costs(model: nn.Module, problem: Problem, config: SearchConfig) -> dict[str, float]:
    """The structural objectives the config asks for (``flops``, ``latency_ms``) of ``model`` as it is,
    on the CPU (latency: median of ``latency.rounds`` forward passes of ``latency.batch_size`` inputs)."""
    measured = {}
    inputs = problem.val.inputs.cpu()
    if "flops" in config.objectives:
        measured["flops"] = float(flops(model, inputs))
    if "latency_ms" in config.objectives:
        measured["latency_ms"] = cpu_latency_ms(model, inputs, config.latency.batch_size, config.latency.rounds)
    return measured


def shrunk_costs(model: nn.Module, problem: Problem, config: SearchConfig) -> dict[str, float]:
    """:func:`costs` of a CPU copy of ``model`` with its unused units physically removed (as export would)."""
    if not set(STRUCTURAL) & set(config.objectives):
        return {}
    shrunk = copy.deepcopy(model).cpu()
    shrink(shrunk, problem.val.inputs[:SHRINK_CHECK_SAMPLES].cpu(), problem.task_names)
    return costs(shrunk, problem, config)


def objective_scales(config: SearchConfig, dense: nn.Module, problem: Problem) -> list[float]:
    """Per objective, the dense model's value of a minimised cost (1 for the maximised fractions):
    how :mod:`automtl.pareto` normalises them."""
    dense_costs = costs(dense, problem, config) | {"nonzero_parameters": sum(p.numel() for p in dense.parameters())}
    return [float(dense_costs.get(name, 1.0)) for name, _ in objectives(config, problem.task_names)]


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when this process sees a GPU (Ray sets which one), else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrialFailed("backend.device is cuda but this worker sees no GPU (torch.cuda.is_available() is False)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


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

    @classmethod
    def prepare(cls, config: SearchConfig, run_dir: str | Path, problem: Problem | None = None) -> "Bench":
        """Build the problem and load (or train once and cache) the dense model under ``run_dir/dense``."""
        run_dir = Path(run_dir)
        problem = problem or config.problem.build(config.seed)
        spec = problem.default_model.override(**config.model.overrides())
        device = resolve_device(config.backend.device)
        dense = dense_model(problem, spec, TrainConfig(**config.dense.model_dump()), config.seed, run_dir / "dense",
                            device)
        dense.model.eval()
        return cls(config, problem, spec, dense.model, run_dir, dense.seconds)

    @property
    def task_names(self) -> list[str]:
        return self.problem.task_names

    def on(self, device: torch.device) -> tuple[Problem, nn.Module]:
        """The problem's data and the dense model on ``device`` (moved once, then reused)."""
        if device not in self._placed:
            self._placed[device] = (self.problem.to(device), copy.deepcopy(self.dense).to(device))
        return self._placed[device]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_placed": {}}  # ship the CPU copies only (Ray object store, spawn)


@dataclass
class TrialResult:
    values: list[float]
    sparsity: float
    compression_ratio: float
    empty_units: int
    nonzero_parameters: int
    total_parameters: int
    accuracy: dict[str, float]
    test_accuracy: dict[str, float]
    final_loss_weights: dict[str, float]
    structure: dict[str, float]  # flops / latency_ms of the shrunk model, when they are objectives
    prune_seconds: float
    fine_tune_seconds: float
    eval_seconds: float
    weights: str

    @property
    def compute_seconds(self) -> float:
        return self.prune_seconds + self.fine_tune_seconds + self.eval_seconds

    def as_dict(self) -> dict:
        """Every field, plus ``compute_seconds`` (what is stored on the study's trial)."""
        return asdict(self) | {"compute_seconds": self.compute_seconds}


def weights_path(number: int) -> str:
    """Where trial ``number`` keeps its pruned weights, relative to the run directory."""
    return f"trials/trial-{number:06d}.pt"


def run(plan: TrialPlan, bench: Bench, number: int) -> TrialResult:
    """Prune, fine-tune, evaluate and save; raise TrialFailed on a non-finite result."""
    config = bench.config
    problem, dense = bench.on(resolve_device(config.backend.device))
    seed = config.seed + number
    torch.manual_seed(seed)
    model = copy.deepcopy(dense)

    start = time.perf_counter()
    ctx = PruneContext.create(
        model, problem, calibration_size=config.pruning.calibration_size,
        aggregate=config.pruning.aggregate, heads=config.pruning.heads, seed=seed,
    )
    apply(model, plan.steps, ctx)
    pruned = time.perf_counter()

    weighting = make_weighting("static" if plan.loss_weights else plan.loss_method, problem.task_names, plan.loss_weights)
    distill = Distillation(dense, plan.distillation, config.distillation.temperature) if plan.distillation > 0 else None
    history = fit(model, problem, TrainConfig(**config.fine_tune.model_dump()), seed, weighting, distill)
    tuned = time.perf_counter()
    if any(not math.isfinite(v) for epoch in history for v in epoch.values()):
        raise TrialFailed(f"fine-tuning diverged: non-finite task loss {history[-1]}")

    make_permanent(model)
    recalibrate_batchnorm(model, ctx.calibration, config.fine_tune.batch_size)
    report = apply(model, [], ctx)  # accounting after fine-tuning (masks held, so unchanged)
    accuracy = evaluate(model, problem, problem.val)
    test_accuracy = evaluate(model, problem, problem.test)
    structure = shrunk_costs(model, problem, config)
    evaluated = time.perf_counter()
    if any(not math.isfinite(v) for v in (*accuracy.values(), *test_accuracy.values())):
        raise TrialFailed(f"non-finite accuracy {accuracy}")

    measures = {"sparsity": report.sparsity, "nonzero_parameters": report.nonzero_parameters, **structure}
    measures |= {f"accuracy.{t}": a for t, a in accuracy.items()}
    values = [float(measures[name]) for name, _ in objectives(config, problem.task_names)]
    relative = weights_path(number)
    checkpoints.save(bench.run_dir / relative, model.state_dict(), {"trial": number, "plan": plan.as_dict()}, compact=True)
    return TrialResult(
        values=values,
        sparsity=report.sparsity,
        compression_ratio=report.compression_ratio,
        empty_units=report.empty_units,
        nonzero_parameters=report.nonzero_parameters,
        total_parameters=report.total_parameters,
        accuracy=accuracy,
        test_accuracy=test_accuracy,
        final_loss_weights=weighting.current(),
        structure=structure,
        prune_seconds=pruned - start,
        fine_tune_seconds=tuned - pruned,
        eval_seconds=evaluated - tuned,
        weights=relative,
    )
