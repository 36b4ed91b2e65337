"""``mnist1d-pair``: two independent MNIST-1D sequences stacked as two channels.

Both sequences come from the ``mnist1d`` package's local generator
(``make_dataset``, never its download path) with different seeds; task
``first`` classifies channel 0, task ``second`` channel 1 (10 classes each).
Inputs are ``(2, 40)``. The generator's train part is split 80/20 into
train/val; its test part is the test split.
"""

from __future__ import annotations

import numpy as np
import torch
from mnist1d.data import get_dataset_args, make_dataset

from automtl.errors import UserError
from automtl.models import ModelSpec
from automtl.problems.base import Problem, Split, Task

DEFAULT_TASKS = ("first", "second")


def _generate(num_samples: int, seed: int) -> dict:
    """Run mnist1d's generator without leaking its global numpy/random seeding."""
    import random

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        return make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _split(first: np.ndarray, second: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> Split:
    x = np.stack([first, second], axis=1).astype(np.float32)
    return Split(
        inputs=torch.from_numpy(x),
        targets={name: torch.from_numpy(y.astype(np.int64)) for name, y in zip(DEFAULT_TASKS, (y1, y2))},
    )


def mnist1d_pair(num_samples: int = 10000, seed: int = 0) -> Problem:
    """Build the problem from ``2 x num_samples`` generated sequences."""
    if num_samples < 100:
        raise UserError(f"mnist1d-pair option 'num_samples' must be >= 100, got {num_samples}")
    a = _generate(num_samples, seed=2 * seed + 1)
    b = _generate(num_samples, seed=2 * seed + 2)
    n_train = len(a["y"])
    cut = int(0.8 * n_train)
    # Shuffle the second stream's pairing so the two labels are independent.
    perm_train = np.random.default_rng(seed).permutation(n_train)
    perm_test = np.random.default_rng(seed + 1).permutation(len(b["y_test"]))
    bx, by = b["x"][perm_train], b["y"][perm_train]
    bxt, byt = b["x_test"][perm_test], b["y_test"][perm_test]
    return Problem(
        name="mnist1d-pair",
        tasks=[Task(name, 10) for name in DEFAULT_TASKS],
        train=_split(a["x"][:cut], bx[:cut], a["y"][:cut], by[:cut]),
        val=_split(a["x"][cut:], bx[cut:], a["y"][cut:], by[cut:]),
        test=_split(a["x_test"], bxt, a["y_test"], byt),
        default_model=ModelSpec(arch="cnn", hidden=(256,), channels=(64, 64, 64)),
        options={"num_samples": num_samples, "seed": seed},
    )
