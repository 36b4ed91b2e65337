"""Per-unit activations of hidden layers over calibration inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from automtl.pruning.layers import Layer


@torch.no_grad()
def unit_activations(model: nn.Module, layers: list[Layer], inputs: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
    """``{layer name: (N, units)}`` after each layer's activation function.

    Convolution channels are reduced to one value per sample by the spatial mean.
    """
    collected: dict[str, list[Tensor]] = {layer.name: [] for layer in layers}

    def hook(layer: Layer):
        def record(_module, _inputs, output):
            value = layer.activation(output) if layer.activation is not None else output
            collected[layer.name].append(value.flatten(2).mean(2) if value.dim() > 2 else value)
        return record

    handles = [layer.module.register_forward_hook(hook(layer)) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(values) for name, values in collected.items()}
