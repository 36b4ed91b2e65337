"""Fine-tune several pruned copies of one architecture in one vectorised pass (trial batching).

The members' parameters and buffers are stacked along a new first dimension
and :func:`torch.func.vmap` runs :func:`torch.func.functional_call` of the
architecture over them, so one forward and one backward pass serve every
member. Each member keeps what is its own: masks (``torch.nn.utils.prune``'s
``*_mask`` buffers), BatchNorm statistics, task weighting (and its learned
parameters), distillation weight, learning rate, optimiser state and gradient
clipping norm. While the
fine-tune runs, every member's tensors *are* views of its row of the stack, so
its own hooks (gradual masks, rung judges) read and write the live values;
a member whose ``after_epoch`` says stop leaves the stack at once with its own
copies, and the rest go on without it.

All members read the same batches (one data order, seeded by ``seed``), and share
the distillation teacher's soft targets (carried by the batch, or computed once
per batch for all of them). A member's result is
the one :func:`automtl.train.fit` gives it alone with the same data order,
within float tolerance: each member's own parameters are what the optimiser steps
(one parameter group per member, as :func:`~automtl.train.fit` has one, with
the recipe's optimiser and schedule), their gradients handed out from the stack's
and clipped per member. Layers with randomness (dropout) draw
different numbers per member.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import prune
from torch.func import functional_call, vmap

from automtl import interrupts
from automtl.models import task_outputs
from automtl.problems.base import Problem
from automtl.train import Teacher, TrainConfig, blend_distillation, optimizer_and_schedule, training_split
from automtl.weighting import Weighting

MASKED = "_orig"  # torch.nn.utils.prune keeps a pruned ``name`` as ``name_orig`` * buffer ``name_mask``


@dataclass
class Member:
    """One model of a stacked fine-tune and what is its own; ``history``: each epoch's mean task losses."""

    model: nn.Module
    weighting: Weighting
    lr: float
    distillation: float = 0.0
    before_step: Callable[[int], None] | None = None
    after_epoch: Callable[[int], bool] | None = None
    schedule: str | None = None  # its learning-rate schedule (None: the recipe's)
    seconds: float = 0.0  # its share of the batch's wall-clock: each epoch's time split among the members in it
    history: list[dict[str, float]] = field(default_factory=list)


class NotStackable(Exception):
    """The architecture's forward pass cannot run under ``vmap`` (the members are left as they were)."""


def fit_together(members: list[Member], architecture: nn.Module, problem: Problem, config: TrainConfig,
                 seed: int, teacher: Teacher | None = None) -> None:
    """Fine-tune every member in place on ``problem.train`` for ``config.epochs`` epochs (each at its own
    ``lr``), until its ``after_epoch`` returns False. ``teacher``: what the members distil from, each with
    its own ``distillation`` weight.

    ``architecture`` is any module of the members' architecture without masks (only its forward code is
    used). Raises :class:`NotStackable` if the first batch cannot run vectorised.
    """
    stack = _Stack(members, copy.deepcopy(architecture).train(), problem, teacher)
    for m in members:
        m.weighting.bind(m.model)
    # One group per member, as fit has for one model; a member that left has no gradients, so the
    # optimiser skips it.
    optimizer, scheduler = optimizer_and_schedule(
        [{"params": [*m.model.parameters(), *m.weighting.parameters()], "lr": m.lr} for m in members],
        config, problem, [m.schedule or config.schedule for m in members])
    generator, step = torch.Generator().manual_seed(seed), 0
    train = training_split(problem, teacher)
    try:
        for epoch in range(config.epochs):
            for m in stack.members:
                m.model.train()
            sums, batches, started = None, 0, time.perf_counter()
            for inputs, targets in train.batches(config.batch_size, generator):
                interrupts.check()
                for m in stack.members:
                    if m.before_step is not None:
                        m.before_step(step)
                losses = stack.losses(inputs, targets, first=step == 0)
                optimizer.zero_grad(set_to_none=True)
                sum(m.weighting.combine(dict(zip(problem.task_names, row)))
                    for m, row in zip(stack.members, losses)).backward()
                if config.grad_clip is not None:
                    stack.clip_gradients(config.grad_clip)
                stack.hand_out_gradients()
                optimizer.step()
                scheduler.step()
                for m in stack.members:
                    m.weighting.after_step()
                sums = losses.detach() if sums is None else sums + losses.detach()
                batches, step = batches + 1, step + 1
            share = (time.perf_counter() - started) / len(stack.members)
            for m in stack.members:
                m.seconds += share
            stack.end_epoch(epoch + 1, (sums / batches).tolist())
            if not stack.members:
                break
    finally:
        stack.release()


class _Stack:
    """The members' tensors stacked row by row, and the vectorised loss."""

    def __init__(self, members: list[Member], architecture: nn.Module, problem: Problem,
                 teacher: Teacher | None):
        self.members, self.problem, self.teacher = list(members), problem, teacher
        temperature = teacher.temperature if teacher is not None else 0.0
        _align_masks(members)
        first = members[0].model
        self.param_names = [name for name, _ in first.named_parameters()]
        self.buffer_names = [name for name, _ in first.named_buffers()]
        self.params = {n: torch.stack([m.model.get_parameter(n).detach() for m in members]).requires_grad_()
                       for n in self.param_names}
        self.buffers = {n: torch.stack([m.model.get_buffer(n) for m in members]) for n in self.buffer_names}
        self.masks = {n: n[: -len(MASKED)] + "_mask" for n in self.param_names
                      if n.endswith(MASKED) and n[: -len(MASKED)] + "_mask" in self.buffers}
        self.read_buffers = [n for n in self.buffer_names if n not in set(self.masks.values())]
        self._point()

        def member_losses(params, buffers, distillation, inputs, targets, soft):
            outputs = task_outputs(functional_call(architecture, (params, buffers), (inputs,)), problem.task_names)
            losses = {t.name: t.loss(outputs[t.name], targets[t.name]) for t in problem.tasks}
            if soft is not None:
                losses = blend_distillation(problem, losses, outputs, soft, distillation, temperature)
            return torch.stack([losses[name] for name in problem.task_names])

        self.vectorised = vmap(member_losses, in_dims=(0, 0, 0, None, None, None), randomness="different")

    def _point(self) -> None:
        """Make every member's parameters and buffers views of its row of the stack (and note what the
        members' forward pass reads per row: their distillation weights)."""
        self.owned = {n: [m.model.get_parameter(n) for m in self.members] for n in self.param_names}
        self.distillations = torch.tensor([m.distillation for m in self.members],
                                          device=next(iter(self.params.values())).device)
        self.distilling = self.teacher is not None and any(m.distillation > 0 for m in self.members)
        for row, member in enumerate(self.members):
            for name in self.param_names:
                self.owned[name][row].data = self.params[name].data[row]
            for name in self.buffer_names:
                _set_buffer(member.model, name, self.buffers[name][row])

    def losses(self, inputs: Tensor, targets: dict[str, Tensor], first: bool) -> Tensor:
        """Every member's task losses on one batch: ``(members, tasks)``."""
        params = {}
        for name, stacked in self.params.items():  # a pruned weight is read as weight_orig * weight_mask
            mask = self.masks.get(name)
            params[name[: -len(MASKED)] if mask else name] = stacked * self.buffers[mask] if mask else stacked
        buffers = {name: self.buffers[name] for name in self.read_buffers}
        soft = self.teacher.soft_targets(self.problem, inputs, targets) if self.distilling else None
        try:
            return self.vectorised(params, buffers, self.distillations, inputs, targets, soft)
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            if not first:
                raise
            raise NotStackable(f"{type(exc).__name__}: {exc}") from exc

    def clip_gradients(self, max_norm: float) -> None:
        """Scale each member's gradients to at most ``max_norm`` in total norm over its model's parameters,
        as ``torch.nn.utils.clip_grad_norm_`` does for one model."""
        grads = [stacked.grad for stacked in self.params.values()]
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))

    def hand_out_gradients(self) -> None:
        """Give each member's parameters their rows of the stacked gradients (the optimiser steps the
        members' own parameters, which are views of the stack)."""
        for name, stacked in self.params.items():
            for param, grad in zip(self.owned[name], stacked.grad.unbind(0)):
                param.grad = grad
            stacked.grad = None

    def end_epoch(self, epochs: int, means: list[list[float]]) -> None:
        """Record each member's epoch, ask its ``after_epoch``, and drop those that stop."""
        staying = []
        for member, row in zip(self.members, means):
            member.history.append(dict(zip(self.problem.task_names, row)))
            member.weighting.after_epoch(member.history[-1])
            started = time.perf_counter()
            goes_on = member.after_epoch is None or member.after_epoch(epochs)
            member.seconds += time.perf_counter() - started  # its own rung judging
            if goes_on:
                staying.append(member)
        if len(staying) < len(self.members):
            self._keep([self.members.index(m) for m in staying])

    def _keep(self, rows: list[int]) -> None:
        """Leave only ``rows`` in the stack (the others get their own copies of their tensors)."""
        leaving = [m for i, m in enumerate(self.members) if i not in rows]
        _detach(leaving, self.param_names, self.buffer_names)
        index = torch.tensor(rows, dtype=torch.long, device=next(iter(self.params.values())).device)
        self.members = [self.members[i] for i in rows]
        self.params = {n: p.detach()[index].requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b[index] for n, b in self.buffers.items()}
        self._point()

    def release(self) -> None:
        """Give every remaining member its own copies of its tensors."""
        _detach(self.members, self.param_names, self.buffer_names)
        self.members = []


def _align_masks(members: list[Member]) -> None:
    """Give every member a mask (all ones where it has none) on each tensor some member masks, so all
    have the same parameters and buffers (an all-ones mask changes no output, and goes at make_permanent)."""
    masked = {(owner, name[: -len(MASKED)]) for m in members for full, _ in m.model.named_parameters()
              if full.endswith(MASKED) for owner, _, name in [full.rpartition(".")]}
    for member in members:
        for owner, name in masked:
            module = member.model.get_submodule(owner)
            if not hasattr(module, name + MASKED):
                prune.identity(module, name)


def _detach(members: list[Member], param_names: list[str], buffer_names: list[str]) -> None:
    for member in members:
        for name in param_names:
            param = member.model.get_parameter(name)
            param.data = param.data.clone()
        for name in buffer_names:
            _set_buffer(member.model, name, member.model.get_buffer(name).clone())


def _set_buffer(model: nn.Module, name: str, value: Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner)._buffers[leaf] = value
