"""``gradnorm``: gradient normalisation (Chen et al., 2018)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from automtl.errors import UserError
from automtl.weighting.base import Weighting, device_of


class GradNorm(Weighting):
    """Learn task weights so each task's gradient norm at the last shared layer tracks its training rate.

    The shared layer is the last weight matrix every task's loss reaches (found
    on the first batch). ``alpha`` sets how strongly slow tasks are favoured.
    """

    stackable = False

    def __init__(self, task_names: list[str], alpha: float = 1.5, lr: float = 0.025):
        super().__init__(task_names)
        self.alpha, self.lr = alpha, lr
        self.weights = torch.ones(len(task_names), requires_grad=True)
        self.model: nn.Module | None = None
        self.shared: Tensor | None = None
        self.initial: Tensor | None = None
        self.grad: Tensor | None = None

    def bind(self, model: nn.Module) -> None:
        self.model, self.shared = model, None
        self.weights = self.weights.detach().to(device_of(model)).requires_grad_()

    def _find_shared(self, losses: list[Tensor]) -> Tensor:
        """The last weight matrix (dim >= 2) in the autograd graph of every task's loss."""
        params = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        reached = [
            {i for i, g in enumerate(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
             if g is not None}
            for loss in losses
        ]
        common = set.intersection(*reached)
        if not common:
            raise UserError("gradnorm needs a weight shared by every task; this model has none")
        return params[max(common)]

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        per_task = [losses[n] for n in self.task_names]  # separate graphs: a stack would join them
        stacked = torch.stack(per_task)
        if self.shared is None:
            self.shared = self._find_shared(per_task)
        if self.initial is None:
            self.initial = stacked.detach().clamp_min(1e-12)
        norms = torch.stack([
            torch.autograd.grad(self.weights[i] * loss, self.shared, retain_graph=True, create_graph=True)[0].norm()
            for i, loss in enumerate(per_task)
        ])
        ratios = stacked.detach() / self.initial
        target = (norms.mean() * (ratios / ratios.mean()) ** self.alpha).detach()
        self.grad = torch.autograd.grad((norms - target).abs().sum(), self.weights, retain_graph=True)[0]
        return (self.weights.detach() * stacked).sum()

    def after_step(self) -> None:
        with torch.no_grad():
            self.weights -= self.lr * self.grad
            self.weights.clamp_(min=1e-3)
            self.weights *= len(self.task_names) / self.weights.sum()

    def current(self) -> dict[str, float]:
        w = self.weights.detach()
        return dict(zip(self.task_names, (w / w.sum()).tolist()))
