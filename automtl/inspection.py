"""What can be pruned in a model, before any search (``automtl inspect``).

An :class:`Inspection` is data: the model's parameters and FLOPs, every
prunable layer, the removable unit groups (what is coupled to what: producing
layers, BatchNorms, readers; attention heads), the groups refused and why, the
task heads, where each configured strategy applies, and one trial's cost
measured on a few batches with the trial's weights' size on disk. It is built
by the pruning mechanics the search uses (:class:`~automtl.pruning.PruneContext`),
so what it shows is what the search will do.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from automtl import checkpoints, fidelity
from automtl.config import SearchConfig
from automtl.measure import flops, parameters
from automtl.problems import Problem
from automtl.pruning import PruneContext, apply, get_strategy, make_permanent
from automtl.pruning.groups import UnitGroup
from automtl.train import batches_per_epoch, evaluate

@dataclass
class LayerView:
    name: str
    type: str
    weight_shape: list[int]
    parameters: int
    head: bool  # an output layer: its units (classes) are never removed


@dataclass
class GroupView:
    """A removable unit group: ``units`` of kind ``unit`` (channel, neuron or attention head), removed with
    every entry of the layers that produce them, the BatchNorms on them and the layers that read them."""

    root: str
    units: int
    unit: str
    producers: list[str]
    norms: list[str]
    readers: list[str]

    @classmethod
    def of(cls, group: UnitGroup) -> "GroupView":
        roles = {role: sorted({m.name for m in group.members if m.role == role}) for role in ("out", "norm", "in")}
        root = next(m.module for m in group.members if m.name == group.name)
        unit = "head" if group.heads else ("neuron" if isinstance(root, nn.Linear) else "channel")
        return cls(group.name, group.units, unit, roles["out"], roles["norm"], roles["in"])


@dataclass
class TrialCost:
    """One trial of the config's strategies (each at the middle of its range), measured: pruning, a fine-tune
    batch (:func:`automtl.fidelity.seconds_per_batch`), evaluation on validation and test, and its weights' file."""

    prune_seconds: float
    seconds_per_batch: float
    batches_per_epoch: int
    epochs: int
    eval_seconds: float
    weights_bytes: int
    sparsity: float

    @property
    def estimated_seconds(self) -> float:
        return self.prune_seconds + self.seconds_per_batch * self.batches_per_epoch * self.epochs + self.eval_seconds


@dataclass
class Inspection:
    problem: str
    model: str
    dense: str  # where the dense reference comes from
    parameters: int
    flops: int
    layers: list[LayerView]
    groups: list[GroupView]
    refused: dict[str, str]  # group root -> why structured strategies leave it alone
    untraceable: str | None  # why Torch-Pruning cannot trace the model at all
    strategies: dict[str, str]  # configured strategy -> where it applies
    trial: TrialCost
    tasks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self) | {"trial": asdict(self.trial) | {"estimated_seconds": self.trial.estimated_seconds}}


def _where(name: str, ctx: PruneContext) -> str:
    """Where strategy ``name`` applies in the model of ``ctx``."""
    if not get_strategy(name).structured:
        return f"weights of {len(ctx.weight_layers)} layers"
    if ctx.untraceable:
        return f"nowhere: Torch-Pruning cannot trace the model ({ctx.untraceable})"
    units = sum(g.units for g in ctx.groups)
    return f"{units} units in {len(ctx.groups)} groups" + (f" ({len(ctx.refused)} refused)" if ctx.refused else "")


def _trial_cost(model: nn.Module, problem: Problem, config: SearchConfig) -> TrialCost:
    """Prune a copy of ``model`` as one trial of ``config`` would, time a few fine-tune batches and the
    evaluation, and write its weights as a trial does."""
    model = copy.deepcopy(model)
    recipe = fidelity.epoch_recipe(config)
    started = time.perf_counter()
    ctx = PruneContext.create(model, problem, calibration_size=config.pruning.calibration_size,
                              aggregate=config.pruning.aggregate, heads=config.pruning.heads, seed=config.seed)
    steps = [(name, (rng.low + rng.high) / 2) for name, rng in config.pruning.strategies.items()]
    report = apply(model, steps, ctx)
    pruned = time.perf_counter()
    per_batch = fidelity.seconds_per_batch(model, problem, recipe, config.seed)
    epochs = config.fine_tune.epochs
    if epochs == "auto":  # the rule's choice for this model's measured epoch
        epochs = fidelity.full_epochs(per_batch * batches_per_epoch(problem, recipe), fidelity.budget_seconds(config))
    tuned = time.perf_counter()
    make_permanent(model)
    sample = problem.val.sample(config.data.batch_size)
    evaluate(model, problem, sample, config.data.batch_size)
    eval_seconds = (time.perf_counter() - tuned) * (len(problem.val) + len(problem.test)) / len(sample)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "trial.pt"
        checkpoints.save(path, model.state_dict(), compact=True)
        size = path.stat().st_size
    return TrialCost(pruned - started, per_batch, batches_per_epoch(problem, recipe), epochs, eval_seconds, size,
                     report.sparsity)


def inspect(config: SearchConfig, problem: Problem, model: nn.Module, dense: str) -> Inspection:
    """The inspection of ``model`` (the dense reference, or the factory's model when automtl will train it:
    ``dense`` says which) on ``problem`` under ``config``'s pruning settings."""
    ctx = PruneContext.create(model, problem, calibration_size=config.pruning.calibration_size,
                              aggregate=config.pruning.aggregate, heads=config.pruning.heads, seed=config.seed)
    layers = [LayerView(layer.name, type(layer.module).__name__, list(layer.module.weight.shape),
                        sum(p.numel() for p in layer.module.parameters(recurse=False)), layer.is_output)
              for layer in ctx.layers]
    return Inspection(
        problem=problem.name, model=type(model).__name__, dense=dense, parameters=parameters(model)[0],
        flops=flops(model, ctx.calibration.inputs), layers=layers, groups=[GroupView.of(g) for g in ctx.groups],
        refused=dict(ctx.refused), untraceable=ctx.untraceable,
        strategies={name: _where(name, ctx) for name in config.pruning.strategies},
        trial=_trial_cost(model, problem, config), tasks=problem.task_names)
