"""Unit groups: what a structured strategy removes, found with Torch-Pruning's dependency graph.

A **unit** is one output channel (or neuron) of a hidden layer *together with
everything tied to it*: its BatchNorm entries, every channel coupled to it by a
residual add, a concatenation or a depthwise convolution, and the weights that
read it downstream. A **group** is the set of units that share that coupling
(a layer, or all layers on one residual stream); its members are

* ``out``  — a Linear/Conv that produces the unit: weight row(s) and bias entry
  (a depthwise convolution also *reads* it);
* ``norm`` — an affine BatchNorm on the unit: gamma and beta;
* ``in``   — a Linear/Conv that reads the unit: weight column(s) (several per
  unit after a flatten).

Parameter-free operations in between (activations, functional or not, residual
adds, pooling, reshapes, concatenation) carry the unit along and need nothing.
A group holding any other kind of layer (LayerNorm, GroupNorm, a non-affine BatchNorm, PReLU,
``nn.MultiheadAttention``, a bare ``nn.Parameter``, ...), or whose channel map
Torch-Pruning got wrong (an index outside a layer, one entry in two units: a
reshape it cannot follow, such as a channel shuffle), is **not removable**:
structured strategies leave it alone, and :func:`find_groups` says why.

**Grouped convolutions** (not depthwise) keep as many channels in every
group, so a unit of a group holding one is a channel *position*: that channel
in every convolution group (the channels congruent modulo the channels per
group, the gcd over its grouped convolutions), and a reading grouped
convolution loses the one weight column all its groups share for it.

**Attention heads.** The fused ``qkv`` Linear of a self-attention module (a
Linear with 3x as many outputs as inputs, inside a module with an integer
``num_heads``, as timm's ``Attention``) roots a group whose units are its
*heads*: a unit is the q, k and v rows of one head and the ``proj`` columns
reading that head's output. A masked head outputs exactly zero (zero queries
and keys give uniform attention over zero values); removing it physically
lowers the module's ``num_heads`` (:mod:`automtl.pruning.shrink`). Single
q/k/v channels are never units: the forward's reshape into heads needs whole
heads.

Removing a unit masks *every* member entry, so its output is exactly zero and
nothing reads it: the masked model the trial measures is the model that
export then shrinks. A unit is **alive** while any of its producing entries
(``out`` and ``norm``) is unmasked; it is **empty** when all of them are zero.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch_pruning as tp
from torch import Tensor, nn

from automtl.models import in_mode
from automtl.pruning.layers import PRUNABLE, add_mask, effective, present

log = logging.getLogger(__name__)

Role = Literal["out", "norm", "in"]
OPTYPE = tp.ops.OPTYPE
PARAMETER_FREE = {OPTYPE.ELEMENTWISE, OPTYPE.RESHAPE, OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.SLICE, OPTYPE.UNBIND,
                  OPTYPE.EXPAND}
SUPPORTED = "Linear, Conv1d, Conv2d (grouped and depthwise too), affine BatchNorm, parameter-free ops"


class NotRemovable(Exception):
    """A coupled set of channels that structured strategies cannot remove exactly."""


@dataclass(frozen=True)
class Member:
    """One module's share of a group: which of its entries (``index``) belong to which ``unit``."""

    name: str
    module: nn.Module
    role: Role
    index: Tensor  # long (entries,): row / column / channel index in the module
    unit: Tensor  # long (entries,): the group unit each entry belongs to
    reads: bool  # its input carries the unit ('in' members and depthwise convolutions)
    per_group: int | None = None  # a grouped (not depthwise) convolution: its channels per group on this side

    @property
    def channel_dim(self) -> int:
        """Where the unit's channel sits in this module's input and output."""
        return -1 if isinstance(self.module, nn.Linear) else 1


@dataclass(frozen=True)
class Heads:
    """The group's units are the heads of the attention module ``owner`` (its ``num_heads``)."""

    owner: str
    count: int
    width: int  # channels per head in each of q, k and v

    def unit(self, channels: Tensor) -> Tensor:
        """The head each q/k/v channel of the fused qkv output belongs to."""
        return channels % (self.count * self.width) // self.width


def attention_heads(model: nn.Module, name: str) -> Heads | None:
    """Heads when the layer ``name`` is a self-attention's fused qkv Linear (3x as many outputs as inputs,
    inside a module with an integer ``num_heads`` dividing them), else None."""
    owner, _, _ = name.rpartition(".")
    layer, count = model.get_submodule(name), getattr(model.get_submodule(owner), "num_heads", None)
    if not (isinstance(layer, nn.Linear) and isinstance(count, int) and count > 0
            and layer.out_features == 3 * layer.in_features and layer.out_features % (3 * count) == 0):
        return None
    return Heads(owner, count, layer.out_features // (3 * count))


@dataclass
class UnitGroup:
    """Units removed together; ``name`` is the root layer's qualified name, ``heads`` set when its units are
    attention heads."""

    name: str
    units: int
    members: list[Member]
    heads: Heads | None = None

    @property
    def root(self) -> Member:
        return next(m for m in self.members if m.name == self.name and m.role == "out")

    def root_channels(self, units: list[int]) -> list[int]:
        """The root layer's output channels that make up ``units``."""
        root = self.root
        return root.index[torch.isin(root.unit, torch.as_tensor(units, dtype=torch.long))].tolist()

    @property
    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role != "in"]

    @property
    def readers(self) -> list[Member]:
        return [m for m in self.members if m.reads]

    def _per_unit_any(self, flags: list[tuple[Member, Tensor]]) -> Tensor:
        hits = torch.zeros(self.units, dtype=torch.long)
        for member, flag in flags:
            hits.index_add_(0, member.unit, flag.long().cpu())
        return hits > 0

    def alive(self) -> Tensor:
        """Bool per unit: some producing entry (weight row, bias, gamma, beta) is still unmasked."""
        return self._per_unit_any([(m, _entry_present(m)) for m in self.producers])

    def empty(self) -> Tensor:
        """Bool per unit: every producing entry is exactly zero (export removes these)."""
        return ~self._per_unit_any([(m, _entry_nonzero(m)) for m in self.producers])

    def unheard(self) -> Tensor:
        """Bool per unit: it has readers and every weight column reading it is zero."""
        readers = [m for m in self.members if m.role == "in"]
        columns = [(m, _rows(effective(m.module).ne(0), "in")[_columns(m.module, m.index)]) for m in readers]
        read = self._per_unit_any([(m, torch.ones(len(m.index), dtype=torch.bool)) for m in readers])
        return read & ~self._per_unit_any(columns)

    def input_independent(self) -> Tensor:
        """Bool per unit: no producing weight row is non-zero, so its value is a constant (biases only)."""
        rows = [(m, _rows(effective(m.module).ne(0), "out")[m.index]) for m in self.producers if m.role == "out"]
        return ~self._per_unit_any(rows)

    def strength(self) -> Tensor:
        """Per unit: the summed |weight| of its producing rows (which unit to keep when all would go)."""
        total = torch.zeros(self.units)
        for m in self.producers:
            if m.role == "out":
                total.index_add_(0, m.unit, effective(m.module).flatten(1).abs().sum(1)[m.index].cpu().float())
        return total

    def remove(self, remove: Tensor, strategy: str) -> int:
        """Mask every member entry of the units marked in ``remove``; returns how many units went.

        Never empties the group: when every alive unit is marked, the strongest stays, with a warning.
        """
        alive = self.alive()
        remove = remove.cpu() & alive
        if alive.any() and bool(remove[alive].all()):
            remove[int(torch.where(alive, self.strength(), -1.0).argmax())] = False
            log.warning("%s would empty the units of %s; kept one", strategy, self.name)
        if not remove.any():
            return 0
        for member in self.members:
            gone = remove[member.unit]
            if gone.any():
                _mask_entries(member, member.index[gone])
        return int(remove.sum())


def drop_unheard(groups: list[UnitGroup]) -> int:
    """Mask the producing entries of every alive unit that nothing reads any more (every weight column
    reading it is zero), until none is left (dropping one can leave the units feeding it unheard). Such a
    unit changes no output, before or during fine-tuning (its producing weights get no gradient), so this
    is exact: it only makes zero what could never matter. A group where that would leave a producing layer
    without a non-zero weight is left as it is, so no layer is emptied. Returns the units dropped."""
    def unheard(group: UnitGroup) -> Tensor:
        gone = group.unheard() & group.alive()
        for m in group.producers:
            if m.role == "out" and not (_rows(effective(m.module).ne(0), "out")[m.index] & ~gone[m.unit]).any():
                return torch.zeros_like(gone)
        return gone

    dropped = 0
    while found := sum(g.remove(unheard(g), "dropping unheard units") for g in groups):
        dropped += found
    return dropped


def _rows(mask: Tensor, role: Role) -> Tensor:
    """Per entry (dim 0 for producers, dim 1 for readers): any True in that slice."""
    return (mask.transpose(0, 1) if role == "in" else mask).flatten(1).any(1) if mask.dim() > 1 else mask


def _entry_present(member: Member) -> Tensor:
    flags = _rows(present(member.module), member.role)
    if member.role != "in" and member.module.bias is not None:
        flags = flags | present(member.module, "bias")
    return flags[member.index]


def _entry_nonzero(member: Member) -> Tensor:
    flags = _rows(effective(member.module).ne(0), member.role)
    if member.role != "in" and member.module.bias is not None:
        flags = flags | effective(member.module, "bias").ne(0)
    return flags[member.index]


def _columns(module: nn.Module, channels: Tensor) -> Tensor:
    """The weight columns reading input ``channels`` (a grouped convolution's groups share their columns)."""
    return channels % module.weight.shape[1]


def keep_masks(member: Member, index: Tensor) -> dict[str, Tensor]:
    """``{parameter name: bool mask}`` that is False exactly at the member's entries ``index``."""
    module = member.module
    keep = {"weight": torch.ones_like(module.weight, dtype=torch.bool)}
    if member.role == "in":
        keep["weight"][:, _columns(module, index)] = False
    else:
        keep["weight"][index] = False
        if module.bias is not None:
            keep["bias"] = torch.ones_like(module.bias, dtype=torch.bool)
            keep["bias"][index] = False
    return keep


def _mask_entries(member: Member, index: Tensor) -> None:
    for name, keep in keep_masks(member, index).items():
        add_mask(member.module, keep, name)


def _member(graph: tp.DependencyGraph, item, names: dict[nn.Module, str]) -> Member | None:
    """The member an item of a Torch-Pruning group is (its units: the root's channels), None for a
    parameter-free op."""
    node, kind = item.dep.target, item.dep.target.type
    if kind in PARAMETER_FREE:
        return None
    module = node.module
    name = names.get(module, node.name) if isinstance(module, nn.Module) else node.name
    if any(r is None for r in item.root_idxs):
        raise NotRemovable(f"{name}: channels without a one-to-one map to the group's units")
    index = torch.as_tensor(item.idxs, dtype=torch.long)
    unit = torch.as_tensor(item.root_idxs, dtype=torch.long)
    if kind == OPTYPE.BN and module.affine:
        return _checked(Member(name, module, "norm", index, unit, reads=False))
    depthwise = kind == OPTYPE.DEPTHWISE_CONV
    if kind in (OPTYPE.CONV, OPTYPE.LINEAR, OPTYPE.DEPTHWISE_CONV) and isinstance(module, PRUNABLE):
        out = graph.is_out_channel_pruning_fn(item.dep.handler) or depthwise
        grouped = getattr(module, "groups", 1) > 1 and not depthwise
        per_group = (module.weight.shape[0] // module.groups if out else module.weight.shape[1]) if grouped else None
        return _checked(Member(name, module, "out" if out else "in", index, unit, reads=depthwise or not out,
                               per_group=per_group))
    raise NotRemovable(f"{name} ({type(module).__name__}) is coupled to these channels; supported: {SUPPORTED}")


def _checked(member: Member) -> Member:
    """``member`` if its entries are distinct channels of its module, else NotRemovable (Torch-Pruning lost
    the channel map, as behind a reshape it cannot follow, e.g. a channel shuffle)."""
    weight = member.module.weight
    size = weight.shape[1] * getattr(member.module, "groups", 1) if member.role == "in" else weight.shape[0]
    if len(member.index) and (int(member.index.max()) >= size or len(member.index.unique()) < len(member.index)):
        raise NotRemovable(f"{member.name}: the dependency graph's channel map does not fit the layer ({size} "
                           f"channels; a reshape it cannot follow, such as a channel shuffle, lies in between)")
    return member


@dataclass
class GroupDiscovery:
    """The removable groups of a model, and why the others are not."""

    groups: list[UnitGroup]
    refused: dict[str, str]  # root layer -> reason


def find_groups(model: nn.Module, sample: Tensor, output_layers: set[str]) -> GroupDiscovery:
    """Trace ``model`` once on ``sample`` (eval mode, running statistics untouched) and group its units.

    Every hidden Linear/Conv roots a group unless it is coupled to an output layer's classes.
    Raises whatever Torch-Pruning raises when it cannot trace the model.
    """
    names = {module: name for name, module in model.named_modules()}
    with in_mode(model, False):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=sample[:2])
    outputs = [model.get_submodule(name) for name in output_layers]
    found = GroupDiscovery([], {})
    for group in graph.get_all_groups(ignored_layers=outputs, root_module_types=PRUNABLE):
        root = names[group[0].dep.target.module]
        try:
            members = [m for m in (_member(graph, item, names) for item in group) if m is not None]
        except NotRemovable as exc:
            found.refused[root] = str(exc)
            continue
        found.groups.append(_group(model, root, len(group[0].idxs), members))
    return found


def _group(model: nn.Module, root: str, channels: int, members: list[Member]) -> UnitGroup:
    """The group of ``members`` (units: the root's ``channels``), its units made attention heads or channel
    positions of grouped convolutions where it has them."""
    heads = attention_heads(model, root)
    per_group = [m.per_group for m in members if m.per_group]
    if heads:
        units, unit_of = heads.count, heads.unit
    elif per_group:
        units = math.gcd(*per_group)
        unit_of = lambda unit: unit % units  # noqa: E731
    else:
        return UnitGroup(root, channels, members)
    return UnitGroup(root, units, [replace(m, unit=unit_of(m.unit)) for m in members], heads)
