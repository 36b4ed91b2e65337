"""Physically remove what a pruned model provably does not use.

A unit of a removable group (:mod:`automtl.pruning.groups`) can go when it is
**empty** (every producing entry — weight rows, bias, BatchNorm gamma and beta —
is zero), **silent** (its weight rows are zero, so it is a constant whatever the
input, and that constant reaches its readers as exactly zero, e.g. a ReLU of a
negative bias) or **unheard** (every weight that reads it is zero). For each group,
the candidates are first *zeroed in a copy* of the model, member by member, and
the copy's outputs compared with the model's on a check batch; when zeroing
changes any output (an activation with ``f(0) != 0``, a coupling the graph did
not see) only the unheard units are tried, and failing that the group is left
whole and named. A convolution keeps a multiple of :data:`CHANNEL_MULTIPLE`
channels, the strongest of its removable units (``aligned``), which
onnxruntime runs much faster than other counts. Then Torch-Pruning cuts the accepted units from a copy, which
is compared with the original on the check batch: when the cut raises or
changes an output, the groups are cut one by one, and a group whose cut fails
stays whole and is named with the reason (``kept_whole``, beside the groups
discovery refuses), so the rest still shrinks. Finally the model itself is cut
and checked once more: a difference raises :class:`ShrinkFailed` (callers keep
the unshrunk model or refuse). Output layers' classes are never removed, no
layer is emptied, and a model Torch-Pruning cannot trace is left as it is.

The same cut on a copy is the probe of :func:`removable_groups`: structured
strategies only see groups one of whose units was zeroed and cut exactly, so
whatever a trial removes, export removes.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automtl.models import in_mode, task_outputs
from automtl.pruning.probe import unit_activations
from automtl.pruning.groups import GroupDiscovery, UnitGroup, find_groups, keep_masks
from automtl.pruning.layers import discover, make_permanent

log = logging.getLogger(__name__)

ATOL = RTOL = 1e-4  # shrunk vs original outputs: |a - b| <= 1e-4 + 1e-4 * |b|
CHECK_SAMPLES = 256  # validation inputs on which removals are checked (trials and export alike)
PROBE_SAMPLES = 64  # inputs on which discovery checks that every group can be cut
# A convolution keeps a multiple of this many channels (or all it had): onnxruntime's CPU convolutions (MLAS
# NCHWc) block channels by 8 and take a slower path for other counts, which made a shrunk ResNet-18 about 3x and a
# ConvNeXt about 1.7x slower there at nearly the same widths (PyTorch does not care; docs/BENCHMARKS.md).
CHANNEL_MULTIPLE = 8
HEADS_HINT = ("; attention heads can go only when the forward reshapes by the heads left (num_heads, and "
              "reshape(B, N, -1) after attention, as Torch-Pruning's timm example does), not by the input width")


class ShrinkFailed(Exception):
    """Removing the accepted units changed the model after all; the model it was given is unusable."""


@dataclass
class ShrinkReport:
    removed: dict[str, int] = field(default_factory=dict)  # group root -> units removed
    aligned: dict[str, int] = field(default_factory=dict)  # group root -> removable units kept (CHANNEL_MULTIPLE)
    kept_whole: dict[str, str] = field(default_factory=dict)  # group root (or "model") -> why nothing went

    @property
    def removed_units(self) -> int:
        return sum(self.removed.values())

    @property
    def aligned_units(self) -> int:
        return sum(self.aligned.values())


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
        for name, keep in keep_masks(member, member.index[units[member.unit]]).items():
            getattr(module, name).mul_(keep)


def _zeroing_keeps_outputs(group: UnitGroup, units: Tensor, trial: nn.Module, check_inputs: Tensor,
                           expected: dict[str, Tensor]) -> bool:
    """Zero ``units`` in ``trial``; keep the zeros when the outputs stay as expected, else undo and say so."""
    saved = copy.deepcopy(trial.state_dict())
    _zero(group, units, trial)
    if not compare(outputs(trial, check_inputs, list(expected)), expected)[1]:
        return True
    trial.load_state_dict(saved)
    return False


def _prune_fn(module: nn.Module):
    return tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels


def _cut(model: nn.Module, plan: list[tuple[UnitGroup, list[int]]], sample: Tensor) -> None:
    """Physically remove each group's ``units`` from ``model`` (Torch-Pruning); an attention module's
    ``num_heads`` drops by the heads it loses."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=sample[:2])
    for group, units in plan:
        root = model.get_submodule(group.name)
        graph.get_pruning_group(root, _prune_fn(root), idxs=group.root_channels(units)).prune()
        if group.heads:
            model.get_submodule(group.heads.owner).num_heads -= len(units)


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__


def _cut_fails(model: nn.Module, plan: list[tuple[UnitGroup, list[int]]], inputs: Tensor,
               expected: dict[str, Tensor]) -> str | None:
    """Why cutting ``plan`` from a copy of ``model`` is not exact (it raises, or the outputs on ``inputs``
    leave ``expected``); None when it is."""
    shrunk = copy.deepcopy(model)
    try:
        _cut(shrunk, plan, inputs)
        worst, differing = compare(outputs(shrunk, inputs, list(expected)), expected)
    except Exception as exc:  # noqa: BLE001 - whatever Torch-Pruning or the forward raise, the cut is not exact
        return f"removing its units fails ({_first_line(exc)})"
    return f"removing its units changes the outputs of {differing} by up to {worst:.2e}" if differing else None


def _exact_plan(model: nn.Module, plan: list[tuple[UnitGroup, list[int]]], inputs: Tensor,
                expected: dict[str, Tensor]) -> tuple[list[tuple[UnitGroup, list[int]]], dict[str, str]]:
    """The part of ``plan`` whose cut keeps the outputs: all of it, or else group by group (each added to
    those that passed, on a fresh copy), the others kept whole with the reason."""
    if not plan or _cut_fails(model, plan, inputs, expected) is None:
        return plan, {}
    passed, kept = [], {}
    for entry in plan:
        why = _cut_fails(model, [*passed, entry], inputs, expected)
        if why:
            kept[entry[0].name] = why + (HEADS_HINT if entry[0].heads else "")
        else:
            passed.append(entry)
    return passed, kept


def removable_groups(model: nn.Module, sample: Tensor, task_names: list[str],
                     output_layers: set[str]) -> GroupDiscovery:
    """:func:`~automtl.pruning.groups.find_groups`, less the groups export could not cut: on a copy, one
    unit of every group is zeroed and then cut, and the outputs on ``sample[:PROBE_SAMPLES]`` must stay
    the zeroed copy's. A group whose cut raises (a forward that reshapes to the original width) or changes
    the outputs (a coupling the graph missed) is refused, with the reason. So whatever a structured
    strategy removes, export removes. Raises whatever Torch-Pruning raises when it cannot trace the model."""
    found = find_groups(model, sample, output_layers)
    probe = copy.deepcopy(model).eval()
    make_permanent(probe)
    plan = [(group, [0]) for group in found.groups if group.units > 1]
    for group, units in plan:
        _zero(group, torch.isin(torch.arange(group.units), torch.tensor(units)), probe)
    inputs = sample[:PROBE_SAMPLES]
    _, kept = _exact_plan(probe, plan, inputs, outputs(probe, inputs, task_names))
    found.refused |= kept
    found.groups = [group for group in found.groups if group.name not in kept]
    return found


def _aligned(group: UnitGroup, gone: Tensor, model: nn.Module) -> Tensor:
    """``gone`` less its strongest units, so that a convolution keeps a multiple of :data:`CHANNEL_MULTIPLE`
    channels (at most all it has; a grouped convolution's unit is a channel of each group); other layers and
    attention heads as they are."""
    if group.heads or not isinstance(model.get_submodule(group.name), nn.modules.conv._ConvNd):
        return gone
    step = CHANNEL_MULTIPLE // math.gcd(CHANNEL_MULTIPLE, len(group.root.index) // group.units)  # in units
    left = group.units - int(gone.sum())
    back = min(group.units, -(-left // step) * step) - left
    if back <= 0:
        return gone
    removable = torch.nonzero(gone).flatten()
    gone = gone.clone()
    gone[removable[group.strength()[removable].argsort(descending=True)[:back]]] = False
    return gone


def _candidates(model: nn.Module, check_inputs: Tensor, expected: dict[str, Tensor], report: ShrinkReport
                ) -> list[tuple[UnitGroup, list[int]]]:
    """Per group, the units whose zeroing leaves the outputs on ``check_inputs`` (``expected``) unchanged;
    the groups discovery refuses go into ``report.kept_whole``."""
    task_names = list(expected)
    sample = check_inputs[:2]
    try:
        layers = discover(model, sample, task_names)
        found = find_groups(model, sample, {layer.name for layer in layers if layer.is_output})
    except Exception as exc:  # noqa: BLE001 - a model Torch-Pruning cannot trace keeps every unit
        report.kept_whole["model"] = f"Torch-Pruning cannot trace it ({type(exc).__name__}: {exc})"
        return []
    report.kept_whole |= found.refused
    acts = unit_activations(model, found.groups, check_inputs, magnitude=True)
    trial = copy.deepcopy(model)
    accepted = []
    for group in found.groups:
        unheard = group.unheard()
        for removable in (group.empty() | _silent(group, acts[group.name]) | unheard, unheard):
            if removable.all():  # never empty a layer: keep the strongest unit
                removable[int(group.strength().argmax())] = False
            gone = _aligned(group, removable, model)
            kept = int(removable.sum() - gone.sum())
            if removable.any() and not gone.any():  # all kept to align the channel count
                report.aligned[group.name] = kept
                break
            if gone.any() and _zeroing_keeps_outputs(group, gone, trial, check_inputs, expected):
                accepted.append((group, torch.nonzero(gone).flatten().tolist()))
                if kept:
                    report.aligned[group.name] = kept
                break
        else:
            if (group.empty() | unheard).any():
                report.kept_whole[group.name] = "zeroing its unused units changes the outputs"
                log.warning("shrinking keeps the units of %s: %s", group.name, report.kept_whole[group.name])
    return accepted


def shrink(model: nn.Module, check_inputs: Tensor, task_names: list[str]) -> ShrinkReport:
    """Remove (in place) every empty, silent or unheard unit whose removal leaves the outputs on
    ``check_inputs`` unchanged; a group whose cut would not (tried on a copy) stays whole, named in
    ``kept_whole``. See the module docstring. Raises :class:`ShrinkFailed` if the shrunk model differs
    after all (``model`` is then unusable: pass a copy you can drop)."""
    model.eval()
    report = ShrinkReport()
    expected = outputs(model, check_inputs, task_names)
    plan, kept = _exact_plan(model, _candidates(model, check_inputs, expected, report), check_inputs, expected)
    for name, why in kept.items():
        log.warning("shrinking keeps the units of %s: %s", name, why)
    report.kept_whole |= kept
    if not plan:
        return report
    names = sorted(group.name for group, _ in plan)
    try:
        _cut(model, plan, check_inputs)
        worst, differing = compare(outputs(model, check_inputs, task_names), expected)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the shrunk model is not the model any more
        raise ShrinkFailed(f"removing the unused units of {names} failed ({_first_line(exc)})") from None
    if differing:
        raise ShrinkFailed(f"removing the unused units of {names} changes the outputs of {differing} by up to "
                           f"{worst:.2e}")
    report.removed = {group.name: len(units) for group, units in plan}
    return report
