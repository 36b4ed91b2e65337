"""The peer baseline: the search a competent user writes by hand, given the same data, dense model and time.

Optuna's multi-objective TPE (multivariate) over three things — the amount of
global magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with
``L1Unstructured`` over every hidden Linear/Conv weight; task heads stay dense,
as automtl's default), the task-loss weights (one number per task, normalised)
and the fine-tune's learning rate (log-uniform over the automtl search's range)
— then a fine-tune with Adam and a cosine schedule for ``epochs`` (the automtl
search's full fine-tune, or the length given) and the same evaluation. It
starts no trial once ``seconds`` are spent. Sparsity is counted with
automtl's definition (zero weights and biases of the hidden layers), so both
fronts are measured alike.

    python benchmarks/baseline.py --run-dir RUN_DIR [--seconds 60] [--seed 0] [--epochs N]

``RUN_DIR`` is an automtl run directory: its config and cached dense model are reused.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from torch.nn.utils import prune

from automtl.config import Range
from automtl.models import task_outputs
from automtl.pruning import PruneContext
from automtl.rundir import RunDir
from automtl.train import evaluate
from automtl.trial import Bench


@dataclass
class Point:
    """One finished baseline trial: sparsity and each task's validation and test metric."""

    sparsity: float
    metrics: dict[str, float]
    test_metrics: dict[str, float]


def _fine_tune(model, problem, epochs: int, batch_size: int, lr: float, weights: dict[str, float], seed: int) -> None:
    """The fine-tune a user writes: Adam over the weighted sum of the task losses, cosine-annealed to zero."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(problem.train) // batch_size)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for inputs, targets in problem.train.batches(batch_size, generator):
            outputs = task_outputs(model(inputs), problem.task_names)
            loss = sum(weights[t.name] * t.loss(outputs[t.name], targets[t.name]) for t in problem.tasks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cosine.step()


def run(run_dir: str | Path, seconds: float, seed: int = 0, epochs: int | None = None) -> list[Point]:
    """Search by hand for ``seconds`` on the problem and dense model of an automtl run directory, fine-tuning
    for its full fine-tune's epochs (or ``epochs``)."""
    config = RunDir(run_dir).require().load_config()
    settings = config.fine_tune
    epochs = epochs or settings.epochs
    lr = settings.lr if isinstance(settings.lr, Range) else Range(low=settings.lr / 10, high=settings.lr * 10)
    bench = Bench.prepare(config, run_dir)
    problem, dense = bench.problem, bench.dense
    ctx = PruneContext.create(copy.deepcopy(dense), problem, calibration_size=8)
    hidden = [layer.name for layer in ctx.layers if not layer.is_output]
    points: list[Point] = []

    def objective(trial: optuna.Trial) -> list[float]:
        amount = trial.suggest_float("amount", 0.0, 0.995)
        raw = {t: trial.suggest_float(f"weight_{t}", 0.0, 1.0) for t in problem.task_names}
        rate = trial.suggest_float("lr", lr.low, lr.high, log=True)
        weights = {t: w / max(sum(raw.values()), 1e-9) for t, w in raw.items()}
        model = copy.deepcopy(dense)
        prune.global_unstructured([(model.get_submodule(name), "weight") for name in hidden],
                                  pruning_method=prune.L1Unstructured, amount=amount)
        _fine_tune(model, problem, epochs, settings.batch_size, rate, weights, seed + trial.number)
        for name in hidden:
            prune.remove(model.get_submodule(name), "weight")
        kept = [p.detach() for name in hidden for p in model.get_submodule(name).parameters()]
        sparsity = sum(int(p.eq(0).sum()) for p in kept) / sum(p.numel() for p in kept)
        point = Point(sparsity, evaluate(model, problem, problem.val), evaluate(model, problem, problem.test))
        points.append(point)
        return [sparsity, *(point.metrics[t.name] for t in problem.tasks)]

    study = optuna.create_study(directions=["maximize", *(t.direction for t in problem.tasks)],
                                sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True))
    study.optimize(objective, timeout=seconds)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    points = run(args.run_dir, args.seconds, args.seed, args.epochs)
    print(json.dumps({"trials": len(points), "seconds": time.perf_counter() - started,
                      "points": [p.__dict__ for p in points]}))


if __name__ == "__main__":
    main()
