"""Training (dense and fine-tuning under fixed masks) with a recipe, and per-task evaluation.

:func:`fit` is the one training loop. Masks attached with
``torch.nn.utils.prune`` are re-applied on every forward pass, so weights a
strategy removed stay exactly zero while the network fine-tunes. With a
``teacher``, each task's loss blends in knowledge distillation from the
teacher's softened outputs (computed once over an in-memory training split by
:meth:`Teacher.carrying`, else per batch). Models with BatchNorm have their
running statistics recalibrated (:func:`recalibrate_batchnorm`) whenever masks
or fine-tuning changed the weights they were estimated for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automtl import interrupts, schedules
from automtl.models import task_outputs
from automtl.optimizers import OptimizerSettings, make_optimizer
from automtl.problems.base import Data, Problem, Split
from automtl.weighting import Static, Weighting


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of one training run: ``optimizer`` (:mod:`automtl.optimizers`) at learning rate ``lr``,
    scaled after every batch by ``schedule`` (:mod:`automtl.schedules`; ``step`` multiplies it by ``gamma``
    every ``step_epochs`` epochs) after a linear warm-up over ``warmup_epochs``; ``grad_clip``: the
    model's gradients are scaled to at most this total norm before every step."""

    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: OptimizerSettings = OptimizerSettings()
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 1
    gamma: float = 0.1
    grad_clip: float | None = None

    def identity(self) -> dict:
        """What determines a run's result: epochs, lr, batch size, weight decay, and every other setting
        that differs from its default (so caches written before a setting existed keep their keys)."""
        def flat(config: TrainConfig) -> dict:
            fields = {k: v for k, v in asdict(config).items() if k != "optimizer"}
            return fields | {f"optimizer.{k}": v for k, v in asdict(config.optimizer).items() if k != "weight_decay"}
        defaults, mine = flat(TrainConfig()), flat(self)
        always = {"epochs", "lr", "batch_size"}
        return ({k: mine[k] for k in sorted(always)} | {"weight_decay": self.optimizer.weight_decay}
                | {k: v for k, v in mine.items() if k not in always and v != defaults[k]})


TEACHER = "teacher:"
"""Prefix of the extra targets a training split prepared by :meth:`Teacher.carrying` carries."""


@dataclass(frozen=True)
class Teacher:
    """The model distilled from, put in eval mode. Classification tasks match its class distribution
    softened by ``temperature`` (KL); regression tasks its outputs (MSE). ``train``: the training split
    carrying its soft targets (:meth:`carrying`), read instead of running it on every batch."""

    model: nn.Module
    temperature: float = 2.0
    train: Data | None = None

    def __post_init__(self) -> None:
        self.model.eval()

    def carrying(self, problem: Problem, batch_size: int = 1024) -> "Teacher":
        """This teacher with ``problem.train`` carrying each task's soft target as the extra target
        ``teacher:<task>``, computed once, so distilling on it runs no teacher per batch: a quarter to a third
        of a small network's fine-tune step. A Dataset split is kept as it is (never materialised)."""
        train = problem.train
        if not isinstance(train, Split):
            return replace(self, train=train)
        outputs, _ = predict(lambda inputs: task_outputs(self.model(inputs), problem.task_names), train, batch_size)
        extra = {TEACHER + name: value for name, value in soft_targets(problem, outputs, self.temperature).items()}
        return replace(self, train=Split(train.inputs, {**train.targets, **extra}))

    def soft_targets(self, problem: Problem, inputs: Tensor, targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each task's soft target on one batch: carried by the batch, else the teacher's computed now."""
        if TEACHER + problem.task_names[0] in targets:
            return {name: targets[TEACHER + name] for name in problem.task_names}
        with torch.no_grad():
            return soft_targets(problem, task_outputs(self.model(inputs), problem.task_names), self.temperature)


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from ``teacher``: ``weight`` in [0, 1] of the blended loss."""

    teacher: Teacher
    weight: float = 0.5


def soft_targets(problem: Problem, teacher_outputs: Mapping[str, Tensor], temperature: float) -> dict[str, Tensor]:
    """What each task's student matches: the teacher's log-probabilities softened by ``temperature``
    (classification), or its outputs (regression)."""
    return {t.name: F.log_softmax(teacher_outputs[t.name] / temperature, dim=1) if t.kind == "classification"
            else teacher_outputs[t.name] for t in problem.tasks}


def training_split(problem: Problem, teacher: Teacher | None) -> Data:
    """What a fine-tune reads: the training split carrying the ``teacher``'s soft targets when it has one,
    else ``problem.train``."""
    return teacher.train if teacher is not None and teacher.train is not None else problem.train


def task_losses(
    model: nn.Module, problem: Problem, inputs: Tensor, targets: Mapping[str, Tensor],
    distill: Distillation | None = None,
) -> dict[str, Tensor]:
    """Each task's loss on one batch (blended with distillation when given)."""
    outputs = task_outputs(model(inputs), problem.task_names)
    losses = {t.name: t.loss(outputs[t.name], targets[t.name]) for t in problem.tasks}
    if distill is None or distill.weight == 0:
        return losses
    soft = distill.teacher.soft_targets(problem, inputs, targets)
    return blend_distillation(problem, losses, outputs, soft, distill.weight, distill.teacher.temperature)


def blend_distillation(problem: Problem, losses: Mapping[str, Tensor], outputs: Mapping[str, Tensor],
                       soft: Mapping[str, Tensor], weight: float | Tensor,
                       temperature: float) -> dict[str, Tensor]:
    """``(1 - weight) * loss + weight * distillation`` per task towards the :func:`soft_targets` ``soft``:
    KL for classification tasks, MSE for regression tasks."""
    blended = {}
    for task in problem.tasks:
        student, target = outputs[task.name], soft[task.name]
        if task.kind == "classification":
            # KL(teacher || student) summed over classes, mean over the batch (F.kl_div's "batchmean",
            # written out because vmap has no batching rule for kl_div)
            kd = (target.exp() * (target - F.log_softmax(student / temperature, dim=1))).sum() / len(student)
            kd = kd * temperature**2
        else:
            kd = F.mse_loss(student, target)
        blended[task.name] = (1 - weight) * losses[task.name] + weight * kd
    return blended


def batches_per_epoch(problem: Problem, config: TrainConfig) -> int:
    return math.ceil(len(problem.train) / config.batch_size)


def schedule(config: TrainConfig, problem: Problem) -> schedules.Factor:
    """The learning rate's factor after ``step`` optimiser steps of this recipe on ``problem``."""
    per_epoch = batches_per_epoch(problem, config)
    return schedules.factor(config.schedule, config.epochs * per_epoch, per_epoch,
                            round(config.warmup_epochs * per_epoch), config.step_epochs, config.gamma)


def optimizer_and_schedule(groups: list[dict], config: TrainConfig, problem: Problem,
                           group_schedules: list[str] | None = None):
    """The recipe's optimiser over parameter ``groups`` (each with its ``lr``) and its per-batch scheduler
    (the recipe's schedule, or ``group_schedules``: one per group)."""
    optimizer = make_optimizer(groups, config.optimizer)
    factors = ([schedule(replace(config, schedule=name), problem) for name in group_schedules]
               if group_schedules else schedule(config, problem))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def fit(
    model: nn.Module,
    problem: Problem,
    config: TrainConfig,
    seed: int,
    weighting: Weighting | None = None,
    distill: Distillation | None = None,
    before_step: Callable[[int], None] | None = None,
    after_epoch: Callable[[int], bool] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``problem.train``; return each epoch's mean task losses.

    ``before_step(step)`` runs before every optimiser step's forward pass (steps count from 0 over the
    whole run); ``after_epoch(epochs_done)`` after every epoch, and training stops when it returns False.
    """
    weighting = weighting or Static(problem.task_names)
    weighting.bind(model)
    generator = torch.Generator().manual_seed(seed)
    optimizer, scheduler = optimizer_and_schedule(
        [{"params": [*model.parameters(), *weighting.parameters()], "lr": config.lr}], config, problem)
    train = training_split(problem, distill.teacher if distill is not None else None)
    history, step = [], 0
    for epoch in range(config.epochs):
        model.train()
        sums = {name: 0.0 for name in problem.task_names}
        batches = 0
        for inputs, targets in train.batches(config.batch_size, generator):
            interrupts.check()
            if before_step is not None:
                before_step(step)
            losses = task_losses(model, problem, inputs, targets, distill)
            optimizer.zero_grad(set_to_none=True)
            weighting.combine(losses).backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            weighting.after_step()
            for name, loss in losses.items():
                sums[name] += loss.item()
            batches += 1
            step += 1
        history.append({name: total / batches for name, total in sums.items()})
        weighting.after_epoch(history[-1])
        if after_epoch is not None and not after_epoch(epoch + 1):
            break
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, split: Data, batch_size: int = 128) -> None:
    """Recompute every BatchNorm's running statistics over ``split`` for the weights as they are now
    (``torch.optim.swa_utils.update_bn``: a cumulative average, no parameter changes). No-op without BatchNorm."""
    torch.optim.swa_utils.update_bn(split.batches(batch_size), model)


@torch.no_grad()
def predict(forward: Callable[[Tensor], Mapping[str, Tensor]], split: Data,
            batch_size: int = 1024) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``forward`` (inputs -> per-task outputs) over every batch of ``split`` in order, and the split's
    targets, each concatenated per task."""
    outputs: dict[str, list[Tensor]] = {}
    targets: dict[str, list[Tensor]] = {}
    for inputs, batch_targets in split.batches(batch_size):
        interrupts.check()
        for store, values in ((outputs, forward(inputs)), (targets, batch_targets)):
            for name, value in values.items():
                store.setdefault(name, []).append(value)
    return {k: torch.cat(v) for k, v in outputs.items()}, {k: torch.cat(v) for k, v in targets.items()}


def evaluate(model: nn.Module, problem: Problem, split: Data, batch_size: int = 1024) -> dict[str, float]:
    """Each task's metric over ``split`` (its ``metric_name``, e.g. accuracy or mse), in batches of ``batch_size``."""
    model.eval()
    return problem.score(*predict(lambda inputs: task_outputs(model(inputs), problem.task_names), split, batch_size))
