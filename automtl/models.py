"""Shared-trunk multi-head networks (hard parameter sharing).

Every network here is a :class:`MultiTaskNet`: a ``trunk`` shared by all
tasks, then one linear head per task. ``forward`` returns ``{task_name: logits}``.

Architectures are a registry (``ARCHITECTURES``), each ending in the
``Linear`` + ``ReLU`` blocks of ``hidden``:

* ``mlp``: the flattened input, then the dense blocks only;
* ``cnn``: one ``Conv`` + ``ReLU`` (+ 2x max pooling while the size allows) per
  width in ``channels``, flattened;
* ``resnet``: a ``Conv``-``BatchNorm``-``ReLU`` stem, then per width in
  ``channels`` a stage of ``depth`` residual blocks (the first block of every
  later stage halves the size while it allows), globally average-pooled.

``cnn`` and ``resnet`` pick 1-D or 2-D convolutions from the input shape
(``(C, L)`` or ``(C, H, W)``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Callable, Mapping

from torch import Tensor, nn
from torch.nn import functional as F

from automtl.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """Which network to build.

    ``hidden`` are the widths of the fully connected trunk layers; ``channels``
    are the convolution widths (``cnn``: one conv each; ``resnet``: one stage
    each); ``depth`` is the number of residual blocks per stage (``resnet`` only).
    """

    arch: str = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    channels: tuple[int, ...] = (16, 32)
    depth: int = 1

    def override(self, **changes) -> "ModelSpec":
        """A copy with some fields changed; unknown fields raise UserError."""
        allowed = [f.name for f in fields(self)]
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise UserError(f"model has no field {unknown[0]!r}; allowed: {', '.join(allowed)}")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return replace(self, **changes)

    def as_dict(self) -> dict:
        """The fields that shape the network (``depth`` for ``resnet`` only, so other archs' cache keys stay put)."""
        spec = {"arch": self.arch, "hidden": list(self.hidden), "channels": list(self.channels)}
        return (spec | {"depth": self.depth}) if self.arch == "resnet" else spec


class MultiTaskNet(nn.Module):
    """``trunk`` shared by every task, then ``heads[task]``."""

    def __init__(self, trunk: nn.Sequential, heads: Mapping[str, nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.trunk(x)
        return {name: head(features) for name, head in self.heads.items()}


@contextmanager
def in_mode(model: nn.Module, training: bool):
    """Run a block with ``model`` in train (``True``) or eval mode, then restore its mode."""
    was_training = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was_training)


def task_outputs(output, task_names: list[str]) -> dict[str, Tensor]:
    """A model's outputs keyed by task: a dict as is, a tuple/list in task order."""
    if isinstance(output, dict):
        return output
    if isinstance(output, (tuple, list)) and len(output) == len(task_names):
        return dict(zip(task_names, output))
    raise UserError(
        f"a multi-task model must return a dict keyed by task or a tuple of {len(task_names)} "
        f"outputs (one per task {task_names}), got {type(output).__name__}"
    )


def _dense_blocks(in_features: int, hidden: tuple[int, ...]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    return layers


def _mlp(spec: ModelSpec, input_shape: tuple[int, ...]) -> tuple[list[nn.Module], int]:
    layers = [nn.Flatten(), *_dense_blocks(math.prod(input_shape), spec.hidden)]
    return layers, spec.hidden[-1] if spec.hidden else math.prod(input_shape)


def _cnn(spec: ModelSpec, input_shape: tuple[int, ...]) -> tuple[list[nn.Module], int]:
    if len(input_shape) not in (2, 3):
        raise UserError(
            f"model.arch 'cnn' needs inputs shaped (C, L) or (C, H, W), got {input_shape}; use 'mlp'"
        )
    conv, pool = (nn.Conv1d, nn.MaxPool1d) if len(input_shape) == 2 else (nn.Conv2d, nn.MaxPool2d)
    in_channels, *spatial = input_shape
    layers: list[nn.Module] = []
    for width in spec.channels:
        layers += [conv(in_channels, width, kernel_size=3, padding=1), nn.ReLU()]
        if min(spatial) >= 4:
            layers.append(pool(2))
            spatial = [s // 2 for s in spatial]
        in_channels = width
    flat = in_channels * math.prod(spatial)
    layers += [nn.Flatten(), *_dense_blocks(flat, spec.hidden)]
    return layers, spec.hidden[-1] if spec.hidden else flat


class ResidualBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a 1x1 conv + BN
    when the width or the stride changes, else the identity."""

    def __init__(self, in_channels: int, width: int, stride: int, dims: int):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv1 = conv(in_channels, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, kernel_size=3, padding=1, bias=False)
        self.bn2 = norm(width)
        self.shortcut = (
            nn.Identity() if in_channels == width and stride == 1
            else nn.Sequential(conv(in_channels, width, kernel_size=1, stride=stride, bias=False), norm(width))
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _resnet(spec: ModelSpec, input_shape: tuple[int, ...]) -> tuple[list[nn.Module], int]:
    if len(input_shape) not in (2, 3):
        raise UserError(
            f"model.arch 'resnet' needs inputs shaped (C, L) or (C, H, W), got {input_shape}; use 'mlp'"
        )
    if not spec.channels:
        raise UserError("model.arch 'resnet' needs at least one width in model.channels, e.g. [16, 32]")
    dims = len(input_shape) - 1
    conv, norm, pool = (
        (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d) if dims == 1
        else (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)
    )
    stem, (in_channels, *spatial) = spec.channels[0], input_shape
    layers: list[nn.Module] = [conv(in_channels, stem, kernel_size=3, padding=1, bias=False), norm(stem), nn.ReLU()]
    in_channels = stem
    for stage, width in enumerate(spec.channels):
        for block in range(spec.depth):
            stride = 2 if stage > 0 and block == 0 and min(spatial) >= 4 else 1
            layers.append(ResidualBlock(in_channels, width, stride, dims))
            spatial = [math.ceil(s / stride) for s in spatial]
            in_channels = width
    layers += [pool(1), nn.Flatten(), *_dense_blocks(in_channels, spec.hidden)]
    return layers, spec.hidden[-1] if spec.hidden else in_channels


ARCHITECTURES: dict[str, Callable[[ModelSpec, tuple[int, ...]], tuple[list[nn.Module], int]]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
}


def build_model(
    spec: ModelSpec, input_shape: tuple[int, ...], head_outputs: Mapping[str, int]
) -> MultiTaskNet:
    """Build the trunk named by ``spec.arch`` and one linear head per task."""
    if spec.arch not in ARCHITECTURES:
        raise UserError(f"model.arch {spec.arch!r} is unknown; allowed: {sorted(ARCHITECTURES)}")
    if any(w < 1 for w in (*spec.hidden, *spec.channels)):
        raise UserError(f"model widths must be >= 1, got hidden={spec.hidden} channels={spec.channels}")
    if spec.depth < 1:
        raise UserError(f"model depth must be >= 1, got {spec.depth}")
    layers, features = ARCHITECTURES[spec.arch](spec, tuple(input_shape))
    heads = {name: nn.Linear(features, outputs) for name, outputs in head_outputs.items()}
    return MultiTaskNet(nn.Sequential(*layers), heads)
