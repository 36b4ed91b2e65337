"""Apply strategies in order and account for sparsity honestly.

Definitions (ShrinkBench's):

* **prunable parameters** — weights and biases of every Linear/Conv layer in
  scope (hidden layers, plus output layers when ``heads="include"``);
* **sparsity** — zero prunable parameters / prunable parameters;
* **compression ratio** — all model parameters / non-zero model parameters;
* **empty units** — units of the removable groups (:mod:`automtl.pruning.groups`)
  whose producing entries (weight rows, biases, BatchNorm gamma and beta) are
  all zero: their output is exactly zero and export removes them physically.

After the last strategy, every unit nothing reads any more (each weight that
reads it removed) loses its producing entries too (:func:`~automtl.pruning.groups.drop_unheard`):
they can change no output, so the model is the same function and its
sparsity counts what export would remove anyway. A plan's sparsity can
therefore exceed the share its thresholds remove (by about 1 point at 97 %
on the multidigits MLP).

Masks change what every later layer sees, so a model with BatchNorm has its
running statistics recalibrated on the calibration data after every step.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from automtl.errors import UserError
from automtl.pruning.registry import STRATEGIES, get_strategy
from automtl.pruning.context import PruneContext
from automtl.pruning.groups import drop_unheard
from automtl.pruning.shrink import CHECK_SAMPLES, compare, outputs
from automtl.pruning.layers import PRUNABLE, Layer, effective
from automtl.train import recalibrate_batchnorm

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    parameters: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.parameters if self.parameters else 0.0


@dataclass
class GroupStats:
    units: int
    empty_units: int


@dataclass
class StepReport:
    strategy: str
    threshold: float
    removed: int
    sparsity: float


@dataclass
class PipelineReport:
    layers: dict[str, LayerStats]
    groups: dict[str, GroupStats]
    total_parameters: int
    nonzero_parameters: int
    steps: list[StepReport] = field(default_factory=list)

    @property
    def prunable_parameters(self) -> int:
        return sum(s.parameters for s in self.layers.values())

    @property
    def sparsity(self) -> float:
        return sum(s.zeros for s in self.layers.values()) / max(1, self.prunable_parameters)

    @property
    def compression_ratio(self) -> float:
        return self.total_parameters / max(1, self.nonzero_parameters)

    @property
    def empty_units(self) -> int:
        return sum(s.empty_units for s in self.groups.values())

    def as_dict(self) -> dict:
        return {
            "sparsity": self.sparsity,
            "compression_ratio": self.compression_ratio,
            "empty_units": self.empty_units,
            "prunable_parameters": self.prunable_parameters,
            "total_parameters": self.total_parameters,
            "nonzero_parameters": self.nonzero_parameters,
            "layers": {name: {**asdict(s), "sparsity": s.sparsity} for name, s in self.layers.items()},
            "groups": {name: asdict(s) for name, s in self.groups.items()},
            "steps": [asdict(s) for s in self.steps],
        }


def _layer_stats(layer: Layer) -> LayerStats:
    params = [p for p in (effective(layer.module), effective(layer.module, "bias")) if p is not None]
    return LayerStats(parameters=sum(p.numel() for p in params), zeros=sum(int(p.eq(0).sum()) for p in params))


def describe(model: nn.Module, ctx: PruneContext) -> PipelineReport:
    """Sparsity, compression ratio and empty units of ``model`` as it is now."""
    in_scope = {layer.name for layer in ctx.weight_layers}
    total = nonzero = 0
    for name, param in model.named_parameters():
        if name.endswith("_orig"):
            module = model.get_submodule(name.rsplit(".", 1)[0])
            value = effective(module, name.rsplit(".", 1)[1][: -len("_orig")])
        else:
            value = param.detach()
        total += value.numel()
        nonzero += int(value.ne(0).sum())
    return PipelineReport(
        layers={layer.name: _layer_stats(layer) for layer in ctx.layers if layer.name in in_scope},
        groups={group.name: GroupStats(group.units, int(group.empty().sum())) for group in ctx.groups},
        total_parameters=total,
        nonzero_parameters=nonzero,
    )


def require(model: nn.Module, ctx: PruneContext, strategies: list[str]) -> None:
    """Refuse (UserError) a model the named strategies cannot prune; warn about layers they must skip."""
    if not ctx.weight_layers:
        kinds = sorted({type(m).__name__ for m in model.modules()})
        raise UserError(f"the model has no {'/'.join(t.__name__ for t in PRUNABLE)} layer to prune "
                        f"(besides output layers); its modules are {kinds}")
    structured = [name for name in strategies if get_strategy(name).structured]
    unstructured = sorted(name for name, s in STRATEGIES.items() if not s.structured)
    if structured and ctx.untraceable:
        raise UserError(f"Torch-Pruning cannot trace this model ({ctx.untraceable}); the structured strategies "
                        f"{structured} need its dependency graph (a reshape of the channels it cannot follow, "
                        f"such as a channel shuffle, breaks it). Remove them from pruning.strategies; the "
                        f"unstructured ones {unstructured} work on any model")
    if structured and not ctx.groups:
        reasons = "; ".join(f"{root}: {why}" for root, why in ctx.refused.items()) or "no hidden layer"
        raise UserError(f"the structured strategies {structured} find no removable unit in this model "
                        f"({reasons}); use the unstructured ones {unstructured}")
    for root, why in ctx.refused.items() if structured else ():
        log.warning("structured strategies leave the units of %s alone: %s", root, why)


def apply(model: nn.Module, steps: Sequence[tuple[str, float]], ctx: PruneContext) -> PipelineReport:
    """Apply ``(strategy, threshold)`` steps in order; masks compose. Validates all steps first."""
    resolved = [(get_strategy(name), get_strategy(name).threshold.validate(name, value)) for name, value in steps]
    reports = []
    for strategy, value in resolved:
        removed = strategy(model, ctx, value)
        recalibrate_batchnorm(model, ctx.calibration, ctx.batch_size)
        reports.append(StepReport(strategy.name, value, removed, describe(model, ctx).sparsity))
    if resolved and _drop_unheard_exactly(model, ctx):
        recalibrate_batchnorm(model, ctx.calibration, ctx.batch_size)
    final = describe(model, ctx)
    final.steps = reports
    return final


@torch.no_grad()
def _drop_unheard_exactly(model: nn.Module, ctx: PruneContext) -> int:
    """:func:`~automtl.pruning.groups.drop_unheard`, kept only when the outputs on calibration inputs stay
    as export checks them (:func:`~automtl.pruning.shrink.compare`); a coupling the dependency graph missed
    restores the masks, with a warning."""
    masks = {name: mask.clone() for name, mask in model.named_buffers() if name.endswith("_mask")}
    inputs, tasks = ctx.calibration.inputs[:CHECK_SAMPLES], ctx.problem.task_names
    expected = outputs(model, inputs, tasks)
    dropped = drop_unheard(ctx.groups)
    if not dropped or not compare(outputs(model, inputs, tasks), expected)[1]:
        return dropped
    for name, mask in model.named_buffers():
        if name.endswith("_mask"):
            if name in masks:
                mask.copy_(masks[name])
            else:
                mask.fill_(1.0)
    log.warning("units nothing reads (by the dependency graph) still changed the outputs; they keep their weights")
    return 0
