"""The activation probe: each unit's activation where the network reads it.

A unit's activation is taken from the *input* of every layer that reads it
(forward pre-hooks on the group's readers), so it is the value after whatever
sits in between — a BatchNorm, a functional ``F.relu``/``F.gelu``, an
``nn.SiLU``, a residual add, pooling, or nothing. Spatial positions (and the
several columns a flatten gives one channel) are averaged to one value per
sample. A group with no reader is probed at its root layer's output.

A unit read at several places (a residual stream feeds every block of its
stage) has one activation per **site**. Strategies score each site, normalise
per site, and keep a unit by its best site: :func:`best_site` (``max``) is
the documented rule for combining coupled layers' scores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from automtl.models import in_mode

if TYPE_CHECKING:
    from automtl.pruning.groups import Member, UnitGroup


def _per_unit(values: Tensor, member: Member, units: int) -> Tensor:
    """``(N, entries)`` of one member -> ``(N, units)``, averaging a unit's entries."""
    summed = torch.zeros(len(values), units, device=values.device).index_add_(1, member.unit.to(values.device), values)
    counts = torch.bincount(member.unit, minlength=units).clamp_min(1).to(values.device)
    return summed / counts


def channel_values(member: Member, tensor: Tensor, magnitude: bool = False) -> Tensor:
    """``(N, entries)``: the member's channels of an input or output tensor, one value per sample
    (the mean over positions, of ``|value|`` when ``magnitude``)."""
    index = member.index.to(tensor.device)
    tensor = tensor.abs() if magnitude else tensor
    if member.channel_dim == -1:
        picked = tensor.index_select(-1, index)
        return picked.reshape(len(tensor), -1, len(index)).mean(1)
    return tensor.index_select(1, index).flatten(2).mean(2) if tensor.dim() > 2 else tensor.index_select(1, index)


@torch.no_grad()
def unit_activations(model: nn.Module, groups: list[UnitGroup], inputs: Tensor, batch_size: int = 512,
                     magnitude: bool = False) -> dict[str, list[Tensor]]:
    """``{group name: [(N, units) per site]}`` over ``inputs``, in eval mode (mean ``|activation|`` over
    positions when ``magnitude``)."""
    collected: dict[tuple[str, int], list[Tensor]] = {}
    handles = []

    def record(group: UnitGroup, site: int, member: Member):
        def hook(_module, args, output=None):
            tensor = args[0] if output is None else output
            collected.setdefault((group.name, site), []).append(_per_unit(channel_values(member, tensor, magnitude), member,
                                                                           group.units))
        return hook

    for group in groups:
        readers = group.readers
        for site, member in enumerate(readers):
            handles.append(member.module.register_forward_pre_hook(record(group, site, member)))
        if not readers:
            root = next(m for m in group.producers if m.name == group.name)
            handles.append(root.module.register_forward_hook(record(group, 0, root)))
    try:
        with in_mode(model, False):
            for start in range(0, len(inputs), batch_size):
                model(inputs[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    sites: dict[str, list[Tensor]] = {group.name: [] for group in groups}
    for (name, _site), values in collected.items():
        sites[name].append(torch.cat(values))
    return sites


def best_site(sites: list[Tensor], score: Callable[[Tensor], Tensor]) -> Tensor:
    """Per unit: the largest of ``score(site)`` over its sites (each score already in [0, 1])."""
    return torch.stack([score(site) for site in sites]).max(dim=0).values
