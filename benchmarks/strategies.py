"""Each pruning strategy alone: sparsity vs per-task accuracy on multidigits after a fixed fine-tune.

For every strategy and target sparsity, the threshold is found by bisection
(sparsity is monotone in the threshold), the pruned network is fine-tuned for a
fixed budget with equal task-loss weights, and test accuracy is measured per
task. One-shot *global* magnitude pruning (torch.nn.utils.prune.global_unstructured
over the trunk weights) with the same fine-tune is the baseline.

    python benchmarks/strategies.py [--epochs 10] [--targets 0.5,0.8,0.9,0.95]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

from torch.nn.utils import prune

from _report import publish
from automtl import ModelSpec, TrainConfig, evaluate, get_problem
from automtl.pruning import STRATEGIES, PruneContext, apply
from automtl.dense import trained as dense_model
from automtl.train import fit

SPEC = ModelSpec("mlp", (256, 128))


def prune_to(dense, problem, strategy: str, target: float, steps: int = 14):
    """The smallest threshold whose sparsity reaches ``target`` (or the maximum if none does)."""
    spec = STRATEGIES[strategy].threshold
    low, high = spec.low, spec.high

    def attempt(value):
        model = copy.deepcopy(dense)
        report = apply(model, [(strategy, value)], PruneContext.create(model, problem, seed=0))
        return model, report

    best = attempt(high) + (high,)
    if best[1].sparsity < target:
        return best
    for _ in range(steps):
        mid = (low + high) / 2
        model, report = attempt(mid)
        if report.sparsity >= target:
            high, best = mid, (model, report, mid)
        else:
            low = mid
    return best


def global_magnitude(dense, target: float):
    model = copy.deepcopy(dense)
    params = [(m, "weight") for m in model.trunk if hasattr(m, "weight")]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=target)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--targets", default="0.5,0.8,0.9,0.95")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]

    problem = get_problem("multidigits", off=2, seed=0)
    with tempfile.TemporaryDirectory() as cache:
        dense = dense_model(problem, SPEC, TrainConfig(), 0, cache).model
    tune = TrainConfig(epochs=args.epochs)
    dense_acc = evaluate(dense, problem, problem.test)
    rows = []
    started = time.perf_counter()
    for target in targets:
        model = global_magnitude(dense, target)
        fit(model, problem, tune, seed=0)
        acc = evaluate(model, problem, problem.test)
        rows.append(("global magnitude (baseline)", "amount", target, target, acc))
        print(rows[-1], flush=True)
        for strategy in sorted(STRATEGIES):
            model, report, value = prune_to(dense, problem, strategy, target)
            fit(model, problem, tune, seed=0)
            acc = evaluate(model, problem, problem.test)
            rows.append((strategy, f"{STRATEGIES[strategy].threshold.symbol}={value:.4g}", target, report.sparsity, acc))
            print(rows[-1], flush=True)
    lines = [
        "## Pruning strategies alone (`benchmarks/strategies.py`)",
        "",
        f"multidigits (off=2), MLP 256-128 trunk, dense test accuracy left/right "
        f"{dense_acc['left']:.1%}/{dense_acc['right']:.1%}. Each strategy is applied alone at the smallest "
        f"threshold reaching the target sparsity (bisection), then fine-tuned {args.epochs} epochs with equal "
        "task-loss weights; accuracy is on the test split. Sparsity = zero trunk weights+biases / all trunk "
        "weights+biases (heads excluded). The baseline is one-shot global magnitude pruning of the trunk "
        "weights with the same fine-tune. A strategy that cannot reach a target shows the sparsity it "
        "reached at its maximum threshold.",
        "",
        "| target | strategy | threshold | sparsity | left | right |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for name, threshold, target, sparsity, acc in rows:
        lines.append(f"| {target:.0%} | {name} | {threshold} | {sparsity:.1%} | {acc['left']:.1%} | {acc['right']:.1%} |")
    publish("strategies", lines, f"python benchmarks/strategies.py --epochs {args.epochs} --targets {args.targets}",
            started)


if __name__ == "__main__":
    main()
