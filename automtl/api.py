"""The public, high-level operations the CLI calls (and users may call directly)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automtl.problems import get_problem
from automtl.train import TrainConfig, dense_model, evaluate


def default_cache_dir() -> Path:
    """``$AUTOMTL_CACHE_DIR``, else ``~/.cache/automtl``."""
    return Path(os.environ.get("AUTOMTL_CACHE_DIR") or Path.home() / ".cache" / "automtl")


@dataclass
class DenseReport:
    problem: str
    model: dict
    seed: int
    epochs: int
    accuracy: dict[str, float]
    val_accuracy: dict[str, float]
    parameters: int
    checkpoint: str
    cached: bool
    train_seconds: float


def train_dense(
    problem: str,
    options: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> DenseReport:
    """Train (or load from cache) the dense model of ``problem`` and evaluate it per task.

    Example:
        >>> report = train_dense("multidigits", seed=0)  # doctest: +SKIP
        >>> report.accuracy
        {'left': 0.92..., 'right': 0.93...}
    """
    prob = get_problem(problem, seed=seed, **(options or {}))
    spec = prob.default_model.override(**(model or {}))
    dense = dense_model(prob, spec, config, seed, cache_dir or default_cache_dir())
    return DenseReport(
        problem=prob.name,
        model=spec.as_dict(),
        seed=seed,
        epochs=config.epochs,
        accuracy=evaluate(dense.model, prob, prob.test),
        val_accuracy=evaluate(dense.model, prob, prob.val),
        parameters=sum(p.numel() for p in dense.model.parameters()),
        checkpoint=str(dense.path),
        cached=dense.cached,
        train_seconds=dense.seconds,
    )
