"""Pruning mechanics: which layers can be pruned, their effective weights, adding masks.

This is the only module that touches ``torch.nn.utils.prune``. Strategies
(the criteria) decide *what* to remove; this module removes it. Masks compose
multiplicatively: a later strategy's mask is multiplied into the earlier ones,
and strategies score the *effective* (already masked) weights.

A layer is every ``Linear``/``Conv1d``/``Conv2d``. An **output layer** is one
whose result the model returns as a task's output (found by one traced
forward pass); its output units are classes and are never removed by
structured strategies. A **hidden layer** is any other layer; its output
units (neurons / channels) can be removed whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from automtl.models import task_outputs

log = logging.getLogger(__name__)

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


@dataclass
class Layer:
    """A prunable module, its qualified name, whether it is an output layer, and the
    activation module that follows it (when it is the next sibling in a Sequential)."""

    name: str
    module: nn.Module
    is_output: bool
    activation: nn.Module | None

    @property
    def units(self) -> int:
        return self.module.weight.shape[0]


def discover(model: nn.Module, sample: Tensor, task_names: list[str]) -> list[Layer]:
    """Every prunable layer of ``model``, in forward order, output layers marked."""
    produced: dict[int, str] = {}
    order: list[str] = []
    modules = dict(model.named_modules())

    def hook(name):
        def record(_module, _inputs, output):
            produced[id(output)] = name
            order.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            outputs = task_outputs(model(sample[:2]), task_names)
    finally:
        for h in handles:
            h.remove()
    output_layers = {produced[id(t)] for t in outputs.values() if id(t) in produced}
    return [
        Layer(name, modules[name], name in output_layers, _following_activation(modules, name))
        for name in dict.fromkeys(order)
    ]


def _following_activation(modules: dict[str, nn.Module], name: str) -> nn.Module | None:
    parent_name, _, child = name.rpartition(".")
    parent = modules[parent_name] if parent_name else None
    if isinstance(parent, nn.Sequential):
        children = list(parent._modules)
        i = children.index(child)
        if i + 1 < len(children) and isinstance(parent[i + 1], ACTIVATIONS):
            return parent[i + 1]
    return None


def effective(module: nn.Module, name: str = "weight") -> Tensor:
    """The parameter as the forward pass sees it (``orig * mask`` when pruned)."""
    if hasattr(module, f"{name}_orig"):
        return (getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")).detach()
    param = getattr(module, name)
    return param.detach() if param is not None else None


def trainable(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The leaf parameter the optimiser updates (``weight_orig`` once pruned)."""
    return getattr(module, f"{name}_orig") if hasattr(module, f"{name}_orig") else getattr(module, name)


def present(module: nn.Module, name: str = "weight") -> Tensor:
    """Bool: True where no strategy has masked the parameter yet."""
    if hasattr(module, f"{name}_mask"):
        return getattr(module, f"{name}_mask").detach().ne(0)
    return torch.ones_like(getattr(module, name), dtype=torch.bool)


def add_mask(module: nn.Module, keep: Tensor, name: str = "weight") -> None:
    """Multiply ``keep`` (1 = keep) into the parameter's mask."""
    prune.custom_from_mask(module, name, keep.to(dtype=getattr(module, name).dtype))


def alive_units(layer: Layer) -> Tensor:
    """Bool per output unit: True while any of its incoming weights (or its bias) is unmasked."""
    alive = present(layer.module).flatten(1).any(dim=1)
    return alive | present(layer.module, "bias") if layer.module.bias is not None else alive


def remove_units(layer: Layer, remove: Tensor, strategy: str) -> int:
    """Remove whole output units (weight rows and bias entries) of a hidden layer.

    Never empties the layer: if every alive unit is marked, the first alive one
    with the largest incoming weights is kept and a warning says so. Returns how
    many units were removed.
    """
    if layer.is_output:
        raise ValueError(f"{layer.name} is an output layer; its units are classes")
    alive = alive_units(layer)
    remove = remove & alive
    if alive.any() and bool(remove[alive].all()):
        strength = effective(layer.module).flatten(1).abs().sum(1)
        remove[int(torch.where(alive, strength, -1.0).argmax())] = False
        log.warning("%s would empty layer %s; kept one unit", strategy, layer.name)
    if not remove.any():
        return 0
    keep_rows = (~remove).to(torch.float32)
    weight = layer.module.weight
    add_mask(layer.module, keep_rows.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight))
    if layer.module.bias is not None:
        add_mask(layer.module, keep_rows, "bias")
    return int(remove.sum())


def remove_weights(layer: Layer, remove: Tensor, strategy: str) -> int:
    """Remove individual weights (unstructured). Never removes the layer's last weight
    (the largest one stays, with a warning)."""
    kept = present(layer.module)
    remove = remove & kept
    if kept.any() and bool(remove[kept].all()):
        strength = torch.where(kept, effective(layer.module).abs(), -1.0)
        remove = remove.flatten()
        remove[int(strength.argmax())] = False
        remove = remove.view_as(kept)
        log.warning("%s would empty layer %s; kept one weight", strategy, layer.name)
    if remove.any():
        add_mask(layer.module, (~remove).to(torch.float32))
    return int(remove.sum())


def make_permanent(model: nn.Module) -> None:
    """Bake every mask into its parameter (``prune.remove``): zeros stay, hooks go."""
    for module in model.modules():
        for name in ("weight", "bias"):
            if hasattr(module, f"{name}_mask"):
                prune.remove(module, name)
