"""An example user problem for search_spaces/custom.yaml.

Two tasks on one input: the parity and the "size" (digit >= 5) of the single
scikit-learn digit shown, with a user-defined multi-task model whose heads
return a tuple. Any function returning ``automtl.Problem`` works the same way.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from automtl import Problem, Split, Task


class TwoHeadNet(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.parity = nn.Linear(hidden, 2)
        self.size = nn.Linear(hidden, 2)

    def forward(self, x):
        h = self.body(x)
        return self.parity(h), self.size(h)


def _split(images, labels, idx) -> Split:
    y = torch.from_numpy(labels[idx].astype(np.int64))
    return Split(torch.from_numpy(images[idx]).unsqueeze(1), {"parity": y % 2, "size": (y >= 5).long()})


def make_problem(hidden: int = 128, seed: int = 0) -> Problem:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    train, val, test = np.split(order, [1100, 1450])
    return Problem(
        name="digit-traits",
        tasks=[Task("parity", 2), Task("size", 2)],
        train=_split(images, digits.target, train),
        val=_split(images, digits.target, val),
        test=_split(images, digits.target, test),
        options={"hidden": hidden, "seed": seed},
        model_factory=lambda spec: TwoHeadNet(hidden),
    )
