"""What a user brings: data, named tasks and a model factory.

A :class:`Problem` holds three splits (train / validation / test), the list
of :class:`Task` s that share one input, and a factory that builds a
multi-task network for a :class:`~automtl.models.ModelSpec`. A split is a
:class:`Split` of in-memory tensors or a :class:`DatasetSplit` over a
map-style ``torch.utils.data.Dataset`` (read in batches, never materialised);
both offer the :class:`Data` interface, through which everything reads them.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from automtl import metrics
from automtl.models import ModelSpec, build_model

SPLITS = ("train", "val", "test")
ITEM_FORMAT = "(input, {task: target}) or (input, (target, ...)) in task order"
FINGERPRINT_ITEMS = 64  # evenly spaced dataset items digested when the dataset declares no version

Batch = tuple[Tensor, dict[str, Tensor]]


class ProblemError(ValueError):
    """A problem, split or task that does not fit the contract (a user error when a factory raises it)."""


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
            raise ProblemError(f"task {self.name!r}: give num_classes (classification) or both loss and metric")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or int(self.num_classes) < 1):
            raise ProblemError(f"task {self.name!r}: num_classes must be a positive integer, got {self.num_classes!r}")
        metric = self.metric or metrics.accuracy
        declared = metric if isinstance(metric, metrics.Metric) else None
        direction = self.direction or (declared.direction if declared else metrics.MAXIMIZE)
        name = self.metric_name or (declared.name if declared else "accuracy")
        if direction not in (metrics.MAXIMIZE, metrics.MINIMIZE):
            raise ProblemError(f"task {self.name!r}: direction must be 'maximize' or 'minimize', got {direction!r}")
        if declared and direction != declared.direction:
            raise ProblemError(f"task {self.name!r}: metric {declared.name!r} is to {declared.direction}, "
                               f"not {direction}")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ProblemError(f"task {self.name!r}: metric_name must be letters, digits and _, got {name!r}")
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


def _order(n: int, generator: torch.Generator | None) -> Tensor:
    """The order in which batches and samples visit ``n`` items: shuffled when a generator is given."""
    return torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)


class Data(ABC):
    """What a problem's split offers: its length, batches and in-memory samples on its device, a fingerprint."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where its batches and samples are."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Yield ``(inputs, {task: targets})`` mini-batches in order, or shuffled when a generator is given."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> "Split":
        """The first ``n`` items (at most all) in the order :meth:`batches` visits them, in memory."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "Data":
        """The same split, its batches on ``device``."""

    @abstractmethod
    def for_tasks(self, names: list[str]) -> "Data":
        """This split, checked to carry one target per task of ``names`` (raises :class:`ProblemError`)."""

    @abstractmethod
    def fingerprint(self, digest: "hashlib._Hash") -> None:
        """Feed what identifies the split's data into ``digest``."""

    def loading(self, batch_size: int, num_workers: int) -> "Data":
        """The same split, loading with these settings (only Datasets load)."""
        return self


@dataclass
class Split(Data):
    """Inputs, one target tensor per task, and optional provenance (``meta``), all in memory."""

    inputs: Tensor
    targets: dict[str, Tensor]
    meta: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.inputs)
        for name, target in self.targets.items():
            if len(target) != n:
                raise ProblemError(f"target {name!r} has {len(target)} rows, inputs have {n}")

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def to(self, device: torch.device | str) -> "Split":
        """The same split with every tensor on ``device``."""
        return Split(self.inputs.to(device), {k: v.to(device) for k, v in self.targets.items()},
                     {k: v.to(device) for k, v in self.meta.items()})

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        order = _order(len(self), generator)
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size]
            yield self.inputs[idx], {k: v[idx] for k, v in self.targets.items()}

    def sample(self, n: int, generator: torch.Generator | None = None) -> "Split":
        idx = _order(len(self), generator)[:n]
        return Split(self.inputs[idx], {k: v[idx] for k, v in self.targets.items()})

    def for_tasks(self, names: list[str]) -> "Split":
        if set(self.targets) != set(names):
            raise ProblemError(f"its targets are {sorted(self.targets)}, the tasks are {list(names)}")
        return self

    def fingerprint(self, digest: "hashlib._Hash") -> None:
        digest.update(self.inputs.cpu().contiguous().numpy().tobytes())
        for name in sorted(self.targets):
            digest.update(name.encode())
            digest.update(self.targets[name].cpu().contiguous().numpy().tobytes())


def _concat(batches: list[Batch]) -> Split:
    return Split(torch.cat([inputs for inputs, _ in batches]),
                 {name: torch.cat([targets[name] for _, targets in batches]) for name in batches[0][1]})


@dataclass(frozen=True)
class DatasetSplit(Data):
    """A map-style ``torch.utils.data.Dataset`` as a split: read in batches, never materialised.

    Each item is ``(input, {task: target})`` or ``(input, (target, ...))`` with the targets in task
    order; inputs and targets are tensors, or numbers / arrays ``torch.as_tensor`` takes. The item
    format is checked on the first item when the :class:`Problem` is built. A
    ``torch.utils.data.DataLoader`` with ``num_workers`` workers reads the items on the CPU (the
    order comes from the caller's generator, exactly as for a :class:`Split`); batches are then moved
    to ``device``. ``batch_size`` is the loading batch of :meth:`sample`.

    The dense-model cache identifies the data by its length and ``version`` (else the dataset's own
    ``version`` attribute) when one is declared, or else by a digest of ``FINGERPRINT_ITEMS`` evenly
    spaced items: declare a version when items can change without the length or those items changing.

    Example:
        >>> from automtl.problems.base import DatasetSplit
        >>> data = [(torch.zeros(3), {"y": 1})] * 10
        >>> len(DatasetSplit(data, version="v1").for_tasks(["y"]).sample(4))
        4
    """

    dataset: Dataset
    version: str | None = None
    batch_size: int = 1024
    num_workers: int = 0
    device: torch.device = torch.device("cpu")
    tasks: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.dataset, IterableDataset) or not all(
                hasattr(self.dataset, attr) for attr in ("__len__", "__getitem__")):
            raise ProblemError(f"is a {type(self.dataset).__name__}; give an automtl.Split, an automtl.DatasetSplit "
                               "or a map-style torch.utils.data.Dataset (with __len__ and __getitem__)")

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device: torch.device | str) -> "DatasetSplit":
        return replace(self, device=torch.device(device))

    def loading(self, batch_size: int, num_workers: int) -> "DatasetSplit":
        return replace(self, batch_size=batch_size, num_workers=num_workers)

    def for_tasks(self, names: list[str]) -> "DatasetSplit":
        if len(self) == 0:
            raise ProblemError("the dataset is empty")
        bound = replace(self, tasks=tuple(names))
        bound._item(self.dataset[0], "item 0")
        return bound

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        return self._load(_order(len(self), generator), batch_size)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Split:
        return _concat(list(self._load(_order(len(self), generator)[:n], self.batch_size)))

    def fingerprint(self, digest: "hashlib._Hash") -> None:
        n = len(self)
        version = self.version if self.version is not None else getattr(self.dataset, "version", None)
        digest.update(f"dataset:{n}:{version}".encode())
        if version is None:
            spaced = torch.linspace(0, n - 1, min(FINGERPRINT_ITEMS, n)).round().long()
            _concat(list(self._load(spaced, self.batch_size))).fingerprint(digest)

    def _load(self, indices: Tensor, batch_size: int) -> Iterator[Batch]:
        """The items at ``indices``, in that order, batched and moved to the device (workers load whole
        batches, so a single batch is read in this process)."""
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=indices.tolist(),
                            num_workers=self.num_workers if len(indices) > batch_size else 0,
                            collate_fn=self._collate,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))  # its worker seeds; not the global RNG
        for inputs, targets in loader:
            yield inputs.to(self.device), {name: value.to(self.device) for name, value in targets.items()}

    def _collate(self, items: list) -> Batch:
        inputs, targets = zip(*(self._item(item) for item in items))
        return torch.stack(inputs), {name: torch.stack([t[k] for t in targets]) for k, name in enumerate(self.tasks)}

    def _item(self, item: Any, which: str = "an item") -> tuple[Tensor, list[Tensor]]:
        """One item as tensors: its input and its targets in task order; refuse any other format."""
        tasks = list(self.tasks)
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            shape = f" of {len(item)} elements" if isinstance(item, (tuple, list)) else ""
            raise ProblemError(f"{which} of the dataset is a {type(item).__name__}{shape}; items must be "
                               f"{ITEM_FORMAT}, for the tasks {tasks}")
        inputs, targets = item
        if isinstance(targets, Mapping):
            if set(targets) != set(tasks):
                raise ProblemError(f"{which} has targets for {sorted(targets)}; the tasks are {tasks}")
            targets = [targets[name] for name in tasks]
        elif isinstance(targets, (tuple, list)):
            if len(targets) != len(tasks):
                raise ProblemError(f"{which} has {len(targets)} targets; a tuple gives one per task, in the order "
                                   f"{tasks}")
        else:
            raise ProblemError(f"{which} has targets of type {type(targets).__name__}; give {{task: target}} or a "
                               f"tuple in task order {tasks}")
        try:
            return torch.as_tensor(inputs), [torch.as_tensor(target) for target in targets]
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ProblemError(f"{which}: inputs and targets must be tensors, numbers or arrays "
                               f"({str(exc).splitlines()[0]})") from None


@dataclass
class Problem:
    """A multi-task learning problem.

    ``train`` / ``val`` / ``test`` are :class:`Split` s, :class:`DatasetSplit` s, or map-style
    Datasets (wrapped in a :class:`DatasetSplit`); every split is checked to carry the tasks' targets.

    Example:
        >>> from automtl import get_problem
        >>> problem = get_problem("multidigits")
        >>> [t.name for t in problem.tasks]
        ['left', 'right']
    """

    name: str
    tasks: list[Task]
    train: Data | Dataset
    val: Data | Dataset
    test: Data | Dataset
    default_model: ModelSpec = field(default_factory=ModelSpec)
    options: Mapping[str, Any] = field(default_factory=dict)
    model_factory: Callable[[ModelSpec], nn.Module] | None = None

    def __post_init__(self) -> None:
        """Wrap raw Datasets in :class:`DatasetSplit` and check every split carries the tasks' targets."""
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ProblemError(f"problem {self.name!r} needs unique, non-empty task names, got {names}")
        for split_name in SPLITS:
            split = getattr(self, split_name)
            try:
                split = split if isinstance(split, Data) else DatasetSplit(split)
                setattr(self, split_name, split.for_tasks(names))
            except ProblemError as exc:
                raise ProblemError(f"problem {self.name!r}: the {split_name} split: {exc}") from None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def in_memory(self) -> bool:
        """Whether every split is a :class:`Split` of tensors (no Dataset)."""
        return all(isinstance(getattr(self, name), Split) for name in SPLITS)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.sample(1).inputs.shape[1:])

    def build_model(self, spec: ModelSpec | None = None) -> nn.Module:
        """A fresh (untrained) multi-task network whose outputs are keyed by task name."""
        spec = spec or self.default_model
        if self.model_factory is not None:
            return self.model_factory(spec)
        return build_model(spec, self.input_shape, {t.name: t.outputs for t in self.tasks})

    def score(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> dict[str, float]:
        """Each task's metric of ``outputs`` (a whole split's) against ``targets``."""
        return {t.name: float(t.metric(outputs[t.name], targets[t.name])) for t in self.tasks}

    def to(self, device: torch.device | str) -> "Problem":
        """The same problem with its data on ``device`` (itself when already there); a Dataset stays
        where it is and its batches are moved."""
        if self.train.device == torch.device(device):
            return self
        return replace(self, **{name: getattr(self, name).to(device) for name in SPLITS})

    def loading(self, batch_size: int, num_workers: int) -> "Problem":
        """The same problem, its Dataset splits loading samples in batches of ``batch_size`` with
        ``num_workers`` DataLoader workers (the search's ``data`` settings)."""
        return replace(self, **{name: getattr(self, name).loading(batch_size, num_workers) for name in SPLITS})

    def fingerprint(self) -> str:
        """A digest of the problem's data, so caches notice when the data changes. A Dataset split is
        never read whole: see :class:`DatasetSplit` (its length and version, or 64 spaced items)."""
        digest = hashlib.sha256(self.name.encode())
        for name in SPLITS:
            getattr(self, name).fingerprint(digest)
        return digest.hexdigest()
