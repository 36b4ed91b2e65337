"""What a user brings: data, named tasks and a model factory.

A :class:`Problem` holds three :class:`Split` s (train / validation / test)
of in-memory tensors, the list of :class:`Task` s that share one input, and a
factory that builds a multi-task network for a :class:`~automtl.models.ModelSpec`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automtl import metrics
from automtl.models import ModelSpec, build_model


@dataclass(frozen=True)
class Task:
    """One prediction target: how it is trained (``loss``) and scored (``metric``, over a whole split).

    Classification gives the number of classes and gets cross-entropy and accuracy
    (maximised). Any other task gives its loss and metric; ``metric_name`` and
    ``direction`` default to what a :class:`~automtl.metrics.Metric` declares.

    Example:
        >>> from automtl import Task
        >>> from automtl.metrics import mse, mse_value
        >>> Task("left", 10).metric_name, Task("left", 10).direction
        ('accuracy', 'maximize')
        >>> ink = Task("ink", loss=mse, metric=mse_value, metric_name="mse", direction="minimize")
        >>> ink.kind, ink.outputs
        ('regression', 1)
    """

    name: str
    num_classes: int | None = None
    loss: Callable[[Tensor, Tensor], Tensor] | None = None
    metric: Callable[[Tensor, Tensor], float] | None = None
    metric_name: str | None = None
    direction: str | None = None

    def __post_init__(self) -> None:
        if self.num_classes is None and (self.loss is None or self.metric is None):
            raise ValueError(f"task {self.name!r}: give num_classes (classification) or both loss and metric")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or int(self.num_classes) < 1):
            raise ValueError(f"task {self.name!r}: num_classes must be a positive integer, got {self.num_classes!r}")
        metric = self.metric or metrics.accuracy
        declared = metric if isinstance(metric, metrics.Metric) else None
        direction = self.direction or (declared.direction if declared else metrics.MAXIMIZE)
        name = self.metric_name or (declared.name if declared else "accuracy")
        if direction not in (metrics.MAXIMIZE, metrics.MINIMIZE):
            raise ValueError(f"task {self.name!r}: direction must be 'maximize' or 'minimize', got {direction!r}")
        if declared and direction != declared.direction:
            raise ValueError(f"task {self.name!r}: metric {declared.name!r} is to {declared.direction}, "
                             f"not {direction}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"task {self.name!r}: metric_name must be letters, digits and _, got {name!r}")
        for field_name, value in (("loss", self.loss or F.cross_entropy), ("metric", metric),
                                  ("metric_name", name), ("direction", direction)):
            object.__setattr__(self, field_name, value)

    @property
    def kind(self) -> str:
        """``classification`` (it has classes) or ``regression``."""
        return "classification" if self.num_classes is not None else "regression"

    @property
    def outputs(self) -> int:
        """Width of the task's head in the built-in models: its classes, or one value."""
        return self.num_classes or 1

    @property
    def objective(self) -> str:
        """The task's objective name: ``<metric_name>.<task>``."""
        return f"{self.metric_name}.{self.name}"


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
        return build_model(spec, self.input_shape, {t.name: t.outputs for t in self.tasks})

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
