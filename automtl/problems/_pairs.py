"""Shared construction of MultiMNIST-style two-digit images.

Source images are split into disjoint pools *before* pairing, so no source
image of the test split ever appears in training pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from automtl.problems.base import Split


def split_indices(n: int, fractions: tuple[float, ...], rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into consecutive pools of the given fractions."""
    order = rng.permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(order, cuts)


def overlay_pairs(
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    n_pairs: int,
    offset: int,
    rng: np.random.Generator,
    canvas: int | None = None,
) -> Split:
    """Pair random images of ``pool``: left at ``[0:s, 0:s]``, right at ``[offset:s+offset]^2``.

    ``images`` are ``(N, s, s)`` in [0, 1]; the canvas is ``canvas^2`` (default
    ``s+offset``) and the two digits are combined by pixel-wise maximum; tasks
    are ``left`` and ``right``. ``meta['sources']`` keeps the source indices.
    """
    side = images.shape[1]
    canvas = canvas or side + offset
    left = rng.choice(pool, size=n_pairs)
    right = rng.choice(pool, size=n_pairs)
    x = np.zeros((n_pairs, canvas, canvas), dtype=np.float32)
    x[:, :side, :side] = images[left]
    right_box = (slice(None), slice(offset, offset + side), slice(offset, offset + side))
    x[right_box] = np.maximum(x[right_box], images[right])
    return Split(
        inputs=torch.from_numpy(x).unsqueeze(1),
        targets={
            "left": torch.from_numpy(labels[left].astype(np.int64)),
            "right": torch.from_numpy(labels[right].astype(np.int64)),
        },
        meta={"sources": torch.from_numpy(np.stack([left, right], axis=1))},
    )
