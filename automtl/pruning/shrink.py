"""Physically remove what a pruned model provably does not use.

A unit of a removable group (:mod:`automtl.pruning.groups`) can go when it is
**empty** (every producing entry — weight rows, bias, BatchNorm gamma and beta —
is zero), **silent** (its weight rows are zero, so it is a constant whatever the
input, and that constant reaches its readers as exactly zero, e.g. a ReLU of a
negative bias) or **unheard** (every weight that reads it is zero). For each group,
the candidates are first *zeroed in a copy* of the model, member by member, and
the copy's outputs compared with the model's on a check batch; a group whose
zeroing changes any output (an activation with ``f(0) != 0``, a coupling the
graph did not see) is left whole and named. Only then does Torch-Pruning
remove the accepted units, and the shrunk model is compared with the original
once more (:func:`compare`). Output layers' classes are never removed, and no
layer is emptied.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automtl.models import in_mode, task_outputs
from automtl.pruning.activations import unit_activations
from automtl.pruning.groups import UnitGroup, find_groups
from automtl.pruning.layers import discover

log = logging.getLogger(__name__)

ATOL = RTOL = 1e-4  # shrunk vs original outputs: |a - b| <= 1e-4 + 1e-4 * |b|


@dataclass
class ShrinkReport:
    removed: dict[str, int] = field(default_factory=dict)  # group root -> units removed
    kept_whole: dict[str, str] = field(default_factory=dict)  # group root -> why its candidates stayed

    @property
    def removed_units(self) -> int:
        return sum(self.removed.values())


@torch.no_grad()
def outputs(model: nn.Module, inputs: Tensor, task_names: list[str], batch_size: int = 1024) -> dict[str, Tensor]:
    """The model's per-task outputs over ``inputs`` in eval mode."""
    parts: dict[str, list[Tensor]] = {name: [] for name in task_names}
    with in_mode(model, False):
        for start in range(0, len(inputs), batch_size):
            for name, value in task_outputs(model(inputs[start : start + batch_size]), task_names).items():
                parts[name].append(value)
    return {name: torch.cat(values) for name, values in parts.items()}


def compare(got: dict[str, Tensor], expected: dict[str, Tensor]) -> tuple[float, list[str]]:
    """Largest absolute difference, and the tasks whose outputs differ beyond ``ATOL + RTOL * |expected|``."""
    worst, differing = 0.0, []
    for name, reference in expected.items():
        if got[name].shape != reference.shape:
            return float("inf"), [name]
        worst = max(worst, float((got[name] - reference).abs().max()) if reference.numel() else 0.0)
        if not torch.allclose(got[name], reference, rtol=RTOL, atol=ATOL):
            differing.append(name)
    return worst, differing


def _silent(group: UnitGroup, acts: list[Tensor]) -> Tensor:
    """Units with no incoming weight whose (constant) value is exactly zero wherever it is read."""
    if not acts:
        return torch.zeros(group.units, dtype=torch.bool)
    return group.input_independent() & torch.stack([site.eq(0).all(0) for site in acts]).all(0).cpu()


@torch.no_grad()
def _zero(group: UnitGroup, units: Tensor, model: nn.Module) -> None:
    """Zero every member entry of ``units`` in ``model`` (a copy with the same module names)."""
    for member in group.members:
        module = model.get_submodule(member.name)
        index = member.index[units[member.unit]]
        if member.role == "in":
            module.weight[:, index] = 0
        else:
            module.weight[index] = 0
            if module.bias is not None:
                module.bias[index] = 0


def _prune_fn(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def shrink(model: nn.Module, check_inputs: Tensor, task_names: list[str]) -> ShrinkReport:
    """Remove (in place) every empty or unheard unit whose removal leaves the outputs on ``check_inputs``
    unchanged; see the module docstring."""
    model.eval()
    sample = check_inputs[:2]
    layers = discover(model, sample, task_names)
    found = find_groups(model, sample, {layer.name for layer in layers if layer.is_output})
    expected = outputs(model, check_inputs, task_names)
    acts = unit_activations(model, found.groups, check_inputs)
    trial = copy.deepcopy(model)
    accepted: list[tuple[UnitGroup, list[int]]] = []
    report = ShrinkReport()
    for group in found.groups:
        gone = group.empty() | _silent(group, acts[group.name]) | group.unheard()
        if not gone.any():
            continue
        if gone.all():  # never empty a layer: keep the strongest unit
            gone[int(group.strength().argmax())] = False
        saved = copy.deepcopy(trial.state_dict())
        _zero(group, gone, trial)
        _, differing = compare(outputs(trial, check_inputs, task_names), expected)
        if differing:
            trial.load_state_dict(saved)
            report.kept_whole[group.name] = f"zeroing its {int(gone.sum())} unused units changes outputs {differing}"
            log.warning("export keeps the units of %s: %s", group.name, report.kept_whole[group.name])
            continue
        accepted.append((group, torch.nonzero(gone).flatten().tolist()))
    if accepted:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=sample)
        for group, units in accepted:
            root = model.get_submodule(group.name)
            graph.get_pruning_group(root, _prune_fn(root), idxs=units).prune()
            report.removed[group.name] = len(units)
    return report
