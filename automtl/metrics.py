"""Ready losses and metrics for tasks, each metric with its direction and its best / worst values.

A metric is a function ``(outputs, targets) -> float`` over a whole split.
The ones here also say whether higher is better and, where it is fixed, the
range they move in (``ideal`` and ``nadir``), which :mod:`automtl.objectives`
uses to normalise the hypervolume. Regression heads may output ``(N, 1)`` for a
``(N,)`` target: the losses and metrics here line the two up instead of
broadcasting them into an ``(N, N)`` matrix.

Example:
    >>> import torch
    >>> from automtl.metrics import METRICS
    >>> METRICS["mse"].direction, METRICS["mse"].ideal
    ('minimize', 0.0)
    >>> round(METRICS["rmse"](torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0])), 4)
    1.4142
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch.nn.functional as F
from torch import Tensor

Direction = Literal["maximize", "minimize"]
MAXIMIZE: Direction = "maximize"
MINIMIZE: Direction = "minimize"


def _aligned(outputs: Tensor, targets: Tensor) -> Tensor:
    """``outputs`` shaped like ``targets`` when they differ only by a trailing 1 (a one-output head)."""
    if outputs.dim() == targets.dim() + 1 and outputs.shape[-1] == 1:
        return outputs.squeeze(-1)
    return outputs


def mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error loss (a one-output head may be ``(N, 1)`` for ``(N,)`` targets)."""
    return F.mse_loss(_aligned(outputs, targets), targets.to(outputs.dtype))


def mae(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean absolute error loss."""
    return F.l1_loss(_aligned(outputs, targets), targets.to(outputs.dtype))


@dataclass(frozen=True)
class Metric:
    """A named metric: ``fn(outputs, targets) -> float``, its direction, and its ideal / nadir values
    where they are fixed (``None``: taken from the problem's data, see :mod:`automtl.objectives`)."""

    name: str
    fn: Callable[[Tensor, Tensor], float]
    direction: Direction
    ideal: float | None = None
    nadir: float | None = None

    def __call__(self, outputs: Tensor, targets: Tensor) -> float:
        return float(self.fn(outputs, targets))


def _accuracy(logits: Tensor, target: Tensor) -> float:
    return (logits.argmax(dim=1) == target).float().mean().item()


def _multilabel_f1(logits: Tensor, target: Tensor) -> float:
    predicted, actual = logits > 0, target > 0.5
    true_positive = (predicted & actual).sum().item()
    return 2 * true_positive / max(1, predicted.sum().item() + actual.sum().item())


accuracy = Metric("accuracy", _accuracy, MAXIMIZE, ideal=1.0, nadir=0.0)
mse_value = Metric("mse", lambda o, t: mse(o, t).item(), MINIMIZE, ideal=0.0)
mae_value = Metric("mae", lambda o, t: mae(o, t).item(), MINIMIZE, ideal=0.0)
rmse_value = Metric("rmse", lambda o, t: mse(o, t).sqrt().item(), MINIMIZE, ideal=0.0)
multilabel_f1 = Metric("f1", _multilabel_f1, MAXIMIZE, ideal=1.0, nadir=0.0)

METRICS: dict[str, Metric] = {m.name: m for m in (accuracy, mse_value, mae_value, rmse_value, multilabel_f1)}

