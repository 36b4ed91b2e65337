"""Pruning mechanics: which layers can be pruned, their effective weights, adding masks.

This is the only module that touches ``torch.nn.utils.prune``. Strategies
(the criteria) decide *what* to remove; this module removes it. Masks compose
multiplicatively: a later strategy's mask is multiplied into the earlier ones,
and strategies score the *effective* (already masked) weights.

A layer is every ``Linear``/``Conv1d``/``Conv2d``. An **output layer** is one
whose result the model returns as a task's output (found by one traced
forward pass); its output units are classes and are never removed by
structured strategies. A **hidden layer** is any other layer; its output
units (neurons / channels), with everything coupled to them, form the unit
groups of :mod:`automtl.pruning.groups`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from automtl.models import in_mode, task_outputs

log = logging.getLogger(__name__)

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


HEADS = ("exclude", "include")  # whether output layers' weights are candidates (their units never are)

@dataclass
class Layer:
    """A prunable module, its qualified name, and whether it is an output layer."""

    name: str
    module: nn.Module
    is_output: bool


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
        with torch.no_grad(), in_mode(model, False):
            outputs = task_outputs(model(sample[:2]), task_names)
    finally:
        for h in handles:
            h.remove()
    output_layers = {produced[id(t)] for t in outputs.values() if id(t) in produced}
    return [Layer(name, modules[name], name in output_layers) for name in dict.fromkeys(order)]


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
