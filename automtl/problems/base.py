"""What a user brings: data, named tasks and a model factory.

A :class:`Problem` holds three :class:`Split` s (train / validation / test)
of in-memory tensors, the list of :class:`Task` s that share one input, and a
factory that builds a multi-task network for a :class:`~automtl.models.ModelSpec`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automtl.models import ModelSpec, build_model


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Fraction of rows whose arg-max equals the target class."""
    return (logits.argmax(dim=1) == target).float().mean().item()


@dataclass(frozen=True)
class Task:
    """One prediction target. ``loss`` trains it; ``metric`` (higher is better) scores it."""

    name: str
    num_classes: int
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    metric: Callable[[Tensor, Tensor], float] = accuracy


@dataclass
class Split:
    """Inputs, one target tensor per task, and optional provenance (``meta``)."""

    inputs: Tensor
    targets: dict[str, Tensor]
    meta: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.inputs)
        for name, target in self.targets.items():
            if len(target) != n:
                raise ValueError(f"target {name!r} has {len(target)} rows, inputs have {n}")

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device: torch.device | str) -> "Split":
        """The same split with every tensor on ``device``."""
        return Split(self.inputs.to(device), {k: v.to(device) for k, v in self.targets.items()},
                     {k: v.to(device) for k, v in self.meta.items()})

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Yield ``(inputs, targets)`` mini-batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.inputs[idx], {k: v[idx] for k, v in self.targets.items()}


@dataclass
class Problem:
    """A multi-task learning problem.

    Example:
        >>> from automtl import get_problem
        >>> problem = get_problem("multidigits")
        >>> [t.name for t in problem.tasks]
        ['left', 'right']
    """

    name: str
    tasks: list[Task]
    train: Split
    val: Split
    test: Split
    default_model: ModelSpec = field(default_factory=ModelSpec)
    options: Mapping[str, Any] = field(default_factory=dict)
    model_factory: Callable[[ModelSpec], nn.Module] | None = None

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"problem {self.name!r} needs unique, non-empty task names, got {names}")
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if set(split.targets) != set(names):
                raise ValueError(
                    f"problem {self.name!r}: {split_name} split has targets "
                    f"{sorted(split.targets)}, tasks are {names}"
                )

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    def build_model(self, spec: ModelSpec | None = None) -> nn.Module:
        """A fresh (untrained) multi-task network whose outputs are keyed by task name."""
        spec = spec or self.default_model
        if self.model_factory is not None:
            return self.model_factory(spec)
        return build_model(spec, self.input_shape, {t.name: t.num_classes for t in self.tasks})

    def to(self, device: torch.device | str) -> "Problem":
        """The same problem with its data on ``device`` (itself when already there)."""
        if self.train.inputs.device == torch.device(device):
            return self
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def fingerprint(self) -> str:
        """A digest of the problem's data, so caches notice when the data changes."""
        digest = hashlib.sha256(self.name.encode())
        for split in (self.train, self.val, self.test):
            digest.update(split.inputs.contiguous().numpy().tobytes())
            for name in sorted(split.targets):
                digest.update(name.encode())
                digest.update(split.targets[name].contiguous().numpy().tobytes())
        return digest.hexdigest()
