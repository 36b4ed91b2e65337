"""``multidigits``: MultiMNIST-style pairs of scikit-learn's 8x8 digits (the embedded default).

The 1,797 digits are split 60/20/20 into train/val/test pools before pairing.
Each sample overlays a left digit at ``[0:8, 0:8]`` and a right digit at
``[off:8+off, off:8+off]`` on an ``(8+off)^2`` canvas (pixel max); the tasks
``left`` and ``right`` classify each digit (10 classes); the regression task
``sum`` (option ``tasks: [left, right, sum]``) predicts the sum of the two
digits divided by its maximum 18 (so in [0, 1], on the scale of the other
losses), scored by mean squared error (minimised). ``off=2`` (default)
overlaps heavily and is hard; larger offsets are easier.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from automtl.errors import UserError
from automtl.models import ModelSpec
from automtl.problems._pairs import overlay_pairs, split_indices
from automtl.metrics import mse, mse_value
from automtl.problems.base import Problem, Split, Task

DEFAULT_TASKS = ("left", "right")
TASKS = {  # every task the problem can carry (option ``tasks``)
    "left": Task("left", 10),
    "right": Task("right", 10),
    "sum": Task("sum", loss=mse, metric=mse_value, metric_name="mse", direction="minimize"),
}


def _with_tasks(split: Split, tasks: list[str]) -> Split:
    targets = {**split.targets, "sum": (split.targets["left"] + split.targets["right"]).float() / 18}
    return Split(split.inputs, {name: targets[name] for name in tasks}, split.meta)


def multidigits(
    off: int = 2, train_pairs: int = 20000, eval_pairs: int = 2000, seed: int = 0,
    tasks: list[str] | None = None,
) -> Problem:
    """Build the problem; ``seed`` fixes the pool split and the pairing; ``tasks`` default to left and right."""
    tasks = list(DEFAULT_TASKS) if tasks is None else tasks
    if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(TASKS):
        raise UserError(f"multidigits option 'tasks' must list distinct tasks from {list(TASKS)}, got {tasks!r}")
    if not 1 <= off <= 8:
        raise UserError(f"multidigits option 'off' must be an integer in [1, 8], got {off!r}")
    if train_pairs < 1 or eval_pairs < 1:
        raise UserError(
            f"multidigits options 'train_pairs' and 'eval_pairs' must be >= 1, "
            f"got {train_pairs} and {eval_pairs}"
        )
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target
    rng = np.random.default_rng(seed)
    train_pool, val_pool, test_pool = split_indices(len(images), (0.6, 0.2, 0.2), rng)
    return Problem(
        name="multidigits",
        tasks=[TASKS[name] for name in tasks],
        train=_with_tasks(overlay_pairs(images, labels, train_pool, train_pairs, off, rng), tasks),
        val=_with_tasks(overlay_pairs(images, labels, val_pool, eval_pairs, off, rng), tasks),
        test=_with_tasks(overlay_pairs(images, labels, test_pool, eval_pairs, off, rng), tasks),
        default_model=ModelSpec(arch="mlp", hidden=(256, 128)),
        options={"off": off, "train_pairs": train_pairs, "eval_pairs": eval_pairs, "seed": seed,
                 **({"tasks": tasks} if tasks != list(DEFAULT_TASKS) else {})},
    )
